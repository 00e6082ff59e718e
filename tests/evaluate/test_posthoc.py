"""Post-hoc logit adjustment and the τ search (docs/method.md §8)."""

import numpy as np
import pytest

from lcreg_jax.evaluate import posthoc


def test_tau_grid_covers_zero_to_max():
  np.testing.assert_allclose(
    posthoc.tau_grid(2.0, 0.1), np.arange(21) / 10, atol=1e-12
  )
  np.testing.assert_allclose(posthoc.tau_grid(1.0, 0.3), [0, 0.3, 0.6, 0.9])


def test_logit_adjustment_against_numpy():
  rng = np.random.default_rng(1)
  counts = np.array([500, 120, 30, 7])
  z = rng.normal(size=(50, 4))
  for tau in (0.0, 0.7, 1.0, 2.0):
    adj = posthoc.logit_adjusted(z, counts, tau)
    want = np.empty_like(z)
    for c in range(4):
      want[:, c] = z[:, c] - tau * np.log(counts[c] / counts.sum())
    np.testing.assert_allclose(adj, want, rtol=1e-12)
    # Predictions and the reported probabilities: argmax / softmax of it.
    np.testing.assert_array_equal(adj.argmax(1), want.argmax(1))
  # Hand-worked: π = (0.8, 0.2), z = (1, 0.5): τ = 0 picks class 0,
  # τ = 1 gives (1 - log 0.8, 0.5 - log 0.2) = (1.223, 2.109): class 1.
  two = posthoc.logit_adjusted([[1.0, 0.5]], [80, 20], 1.0)
  np.testing.assert_allclose(two, [[1.2231436, 2.1094379]], rtol=1e-6)


def test_tau_norm_logits_drop_the_bias_and_use_normalised_columns():
  x = np.array([[1.0, 2.0]])
  kernel = np.array([[3.0, 0.0], [4.0, 1.0]])  # column norms 5 and 1
  np.testing.assert_allclose(
    posthoc.tau_normalized_logits(x, kernel, 1.0), [[11 / 5, 2.0]], rtol=1e-6
  )
  np.testing.assert_allclose(
    posthoc.tau_normalized_logits(x, kernel, 0.0), [[11.0, 2.0]], rtol=1e-6
  )


@pytest.mark.parametrize('metric', ['image_mean', 'class_mean'])
def test_choose_tau_takes_the_best_and_the_smallest_on_ties(metric):
  labels = np.array([0, 1, 1])
  # top-1 by τ: 1/3 at 0, 1 at 0.5 and at 1 (tie), 2/3 at 1.5; the mean of
  # per-class top-1: 1/2, 1, 1, 1/2.
  table = {
    0.0: [[1, 0], [1, 0], [1, 0]],
    0.5: [[1, 0], [0, 1], [0, 1]],
    1.0: [[1, 0], [0, 1], [0, 1]],
    1.5: [[0, 1], [0, 1], [0, 1]],
  }
  best, curves = posthoc.choose_tau(
    lambda t: np.array(table[t]),
    labels,
    np.array([0.0, 0.5, 1.0, 1.5]),
    2,
    metric,
  )
  assert best == 1
  np.testing.assert_allclose(curves['top1'], [1 / 3, 1, 1, 2 / 3])
  np.testing.assert_allclose(curves['class_mean_top1'], [0.5, 1, 1, 0.5])


def test_choose_tau_ties_scores_equal_but_for_rounding():
  """Balanced, 10 images per class: per-class top-1 (.3, .2, .1) at τ = 0
  and (.1, .2, .3) at τ = 1, both 6/30 over images. In float64 the second
  class mean is larger by rounding alone; the selection rule ties them (in
  float32) and keeps τ = 0, as top-1 does."""
  labels = np.repeat(np.arange(3), 10)

  def logits_at(tau):
    hits = (1, 2, 3) if tau else (3, 2, 1)
    pred = np.concatenate(
      [np.where(np.arange(10) < h, c, (c + 1) % 3) for c, h in enumerate(hits)]
    )
    return np.eye(3)[pred]

  best, curves = posthoc.choose_tau(
    logits_at, labels, np.array([0.0, 1.0]), 3, 'class_mean'
  )
  assert curves['class_mean_top1'][1] > curves['class_mean_top1'][0]
  np.testing.assert_array_equal(curves['top1'], [0.2, 0.2])
  assert best == 0
