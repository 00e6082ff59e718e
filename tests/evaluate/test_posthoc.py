"""Post-hoc logit adjustment and the τ search (docs/method.md §8)."""

import numpy as np

from lcreg_jax.evaluate import posthoc


def test_tau_grid_covers_zero_to_max():
  np.testing.assert_allclose(posthoc.tau_grid(2.0, 0.1),
                             np.arange(21) / 10, atol=1e-12)
  np.testing.assert_allclose(posthoc.tau_grid(1.0, 0.3), [0, .3, .6, .9])


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
  kernel = np.array([[3.0, 0.0], [4.0, 1.0]])   # column norms 5 and 1
  np.testing.assert_allclose(posthoc.tau_normalized_logits(x, kernel, 1.0),
                             [[11 / 5, 2.0]], rtol=1e-6)
  np.testing.assert_allclose(posthoc.tau_normalized_logits(x, kernel, 0.0),
                             [[11.0, 2.0]], rtol=1e-6)


def test_choose_tau_takes_the_best_and_the_smallest_on_ties():
  labels = np.array([0, 1, 1])
  # top-1 by τ: 1/3 at 0, 1 at 0.5 and at 1 (tie), 2/3 at 1.5.
  table = {0.0: [[1, 0], [1, 0], [1, 0]], 0.5: [[1, 0], [0, 1], [0, 1]],
           1.0: [[1, 0], [0, 1], [0, 1]], 1.5: [[0, 1], [0, 1], [0, 1]]}
  tau, acc = posthoc.choose_tau(lambda t: np.array(table[t]), labels,
                                np.array([0.0, 0.5, 1.0, 1.5]))
  assert tau == 0.5
  np.testing.assert_allclose(acc, [1 / 3, 1, 1, 2 / 3])
