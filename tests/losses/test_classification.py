"""Classification losses against NumPy/float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from lcreg_jax import losses


def _las_numpy(logits, labels, counts, head, tail, shape, power):
  counts = np.asarray(counts, float)
  r = (counts - counts.min()) / (counts.max() - counts.min())
  if shape == 'concave':
    eps = tail + (head - tail) * np.sin(np.pi * r / 2)
  elif shape == 'linear':
    eps = tail + (head - tail) * r
  elif shape == 'convex':
    eps = head + (head - tail) * np.sin(1.5 * np.pi + np.pi * r / 2)
  else:
    eps = tail + (head - tail) * r**power
  logp = scipy.special.log_softmax(logits, -1)
  c = logits.shape[1]
  per = [
    (1 - eps[y]) * -logp[i, y] + eps[y] / c * -logp[i].sum()
    for i, y in enumerate(labels)
  ]
  return np.mean(per)


@pytest.mark.parametrize(
  'shape,power',
  [('concave', None), ('linear', None), ('convex', None), ('exp', 2.0)],
)
def test_label_aware_smoothing_matches_numpy(shape, power):
  rng = np.random.default_rng(3)
  counts = np.array([500, 120, 40, 9, 5])
  logits = rng.normal(size=(8, 5)) * 3
  labels = rng.integers(0, 5, 8)
  got = losses.label_aware_smoothing(
    jnp.asarray(logits), jnp.asarray(labels), counts, 0.4, 0.1, shape, power
  )
  ref = _las_numpy(logits, labels, counts, 0.4, 0.1, shape, power)
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  eps = losses.las_epsilons(counts, 0.4, 0.1, shape, power)
  assert np.isclose(eps[0], 0.4) and np.isclose(eps[-1], 0.1)


def test_mixup_cross_entropy_is_convex_combination():
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(4, 3))
  y, y2 = np.array([0, 1, 2, 0]), np.array([2, 2, 1, 0])
  logp = scipy.special.log_softmax(logits, -1)
  ref = (
    0.3 * -logp[np.arange(4), y].mean() + 0.7 * -logp[np.arange(4), y2].mean()
  )
  np.testing.assert_allclose(
    losses.mixup_cross_entropy(jnp.asarray(logits), y, y2, 0.3), ref, rtol=1e-5
  )


def test_balanced_softmax_matches_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(9, 4)).astype(np.float32)
  labels = np.array([0, 1, 3, 3, 0, 1, 1, 0, 3])
  counts = np.array([50.0, 7.0, 0.0, 2.0])  # Class 2 absent.
  tiny = 1e-12
  adj = logits.astype(np.float64) + np.log(counts + tiny)
  ref = np.mean(scipy.special.logsumexp(adj, 1) - adj[np.arange(9), labels])
  got = losses.balanced_softmax_loss(
    jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(counts), tiny
  )
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  # With equal counts it is plain cross-entropy.
  ce = np.mean(
    scipy.special.logsumexp(logits, 1) - logits[np.arange(9), labels]
  )
  np.testing.assert_allclose(
    losses.balanced_softmax_loss(logits, labels, np.full(4, 3.0)), ce, rtol=1e-5
  )


def test_top1_on_host_in_float64_and_under_jit():
  scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], np.float32)
  labels = np.array([1, 1, 1])
  host = losses.top1(scores, labels)
  assert host.dtype == np.float64 and host == 2 / 3
  traced = jax.jit(losses.top1)(jnp.asarray(scores), jnp.asarray(labels))
  np.testing.assert_allclose(traced, 2 / 3, rtol=1e-6)
