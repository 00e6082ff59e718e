import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from lcreg_jax import losses


def test_reconstruction_loss_hand_case():
  f = jnp.array([[[1.0], [2.0]]])
  r = jnp.array([[[1.0], [0.0]]])
  # Cor = F̂ Fᵀ = [[1, 2], [0, 0]]: rows give log(1 + e) and log 2.
  expected = (np.log(1 + np.e) + np.log(2)) / 2
  np.testing.assert_allclose(losses.reconstruction_loss(f, r), expected,
                             rtol=1e-6)


def test_reconstruction_loss_normalized_matches_numpy():
  rng = np.random.default_rng(0)
  f = rng.normal(size=(2, 5, 3))
  r = rng.normal(size=(2, 5, 3))
  fn = f / np.linalg.norm(f, axis=-1, keepdims=True)
  rn = r / np.linalg.norm(r, axis=-1, keepdims=True)
  cor = np.einsum('bpd,bqd->bpq', rn, fn) / 0.5
  ref = -np.mean([scipy.special.log_softmax(cor[b], -1)[p, p]
                  for b in range(2) for p in range(5)])
  got = losses.reconstruction_loss(jnp.asarray(f), jnp.asarray(r), True, 0.5)
  np.testing.assert_allclose(got, ref, rtol=1e-4)


def _problem(diagonal, seed=0):
  rng = np.random.default_rng(seed)
  n, d, c = 6, 4, 3
  w = rng.normal(size=(d, c))
  a = rng.normal(size=(c, d, d))
  cov = np.einsum('cde,cfe->cdf', a, a) / d
  if diagonal:
    cov = np.stack([np.diag(x) for x in cov])
  feats = rng.normal(size=(n, d))
  labels = rng.integers(0, c, n)
  return w, cov, feats, labels


@pytest.mark.parametrize('diagonal', [False, True])
def test_isda_sigma2_matches_monte_carlo_mgf(diagonal):
  """E[exp((w_j - w_y)ᵀ ε)] = exp(σ²_j / 2) for ε ~ N(0, λ Σ_y)."""
  w, cov, _, _ = _problem(diagonal)
  lam = 0.3
  table = np.asarray(losses.isda_sigma2_table(jnp.asarray(w), jnp.asarray(cov),
                                              lam))
  rng = np.random.default_rng(1)
  for m in range(w.shape[1]):
    full = np.diag(cov[m]) if diagonal else cov[m]
    eps = rng.multivariate_normal(np.zeros(w.shape[0]), lam * full, 200_000)
    for j in range(w.shape[1]):
      mc = np.mean(np.exp(eps @ (w[:, j] - w[:, m])))
      np.testing.assert_allclose(2 * np.log(mc), table[m, j], rtol=0.05,
                                 atol=0.02)


def test_isda_bound_upper_bounds_monte_carlo_ce():
  w, cov, feats, labels = _problem(False)
  lam = 0.5
  logits = feats @ w
  aug = losses.isda_augmented_logits(jnp.asarray(logits), jnp.asarray(w),
                                     jnp.asarray(cov), jnp.asarray(labels),
                                     lam)
  bound = -scipy.special.log_softmax(np.asarray(aug, np.float64), -1)[
      np.arange(len(labels)), labels]
  rng = np.random.default_rng(2)
  for i, y in enumerate(labels):
    eps = rng.multivariate_normal(np.zeros(w.shape[0]), lam * cov[y], 50_000)
    pert = (feats[i] + eps) @ w
    mc = -scipy.special.log_softmax(pert, -1)[:, y].mean()
    assert mc <= bound[i] + 1e-3
  # The bound is the CE of logits shifted by σ²/2 of the true class' row.
  table = np.asarray(losses.isda_sigma2_table(w, cov, lam))
  np.testing.assert_allclose(aug, logits + table[labels] / 2, rtol=1e-5,
                             atol=1e-5)
  assert np.allclose(np.diag(table), 0, atol=1e-6)


def test_isda_gradient_flows_to_weights_not_covariance():
  w, cov, feats, labels = _problem(False)
  def f(w_, cov_):
    return losses.isda_augmented_logits(jnp.asarray(feats) @ w_, w_, cov_,
                                        jnp.asarray(labels), 0.5).sum()
  gw, gc = jax.grad(f, argnums=(0, 1))(jnp.asarray(w), jnp.asarray(cov))
  assert np.abs(gw).sum() > 0 and np.abs(gc).sum() == 0


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
    eps = tail + (head - tail) * r ** power
  logp = scipy.special.log_softmax(logits, -1)
  c = logits.shape[1]
  per = [(1 - eps[y]) * -logp[i, y] + eps[y] / c * -logp[i].sum()
         for i, y in enumerate(labels)]
  return np.mean(per)


@pytest.mark.parametrize('shape,power', [('concave', None), ('linear', None),
                                         ('convex', None), ('exp', 2.0)])
def test_label_aware_smoothing_matches_numpy(shape, power):
  rng = np.random.default_rng(3)
  counts = np.array([500, 120, 40, 9, 5])
  logits = rng.normal(size=(8, 5)) * 3
  labels = rng.integers(0, 5, 8)
  got = losses.label_aware_smoothing(jnp.asarray(logits), jnp.asarray(labels),
                                     counts, 0.4, 0.1, shape, power)
  ref = _las_numpy(logits, labels, counts, 0.4, 0.1, shape, power)
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  eps = losses.las_epsilons(counts, 0.4, 0.1, shape, power)
  assert np.isclose(eps[0], 0.4) and np.isclose(eps[-1], 0.1)


def test_mixup_cross_entropy_is_convex_combination():
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(4, 3))
  y, y2 = np.array([0, 1, 2, 0]), np.array([2, 2, 1, 0])
  logp = scipy.special.log_softmax(logits, -1)
  ref = 0.3 * -logp[np.arange(4), y].mean() + 0.7 * -logp[np.arange(4),
                                                          y2].mean()
  np.testing.assert_allclose(
      losses.mixup_cross_entropy(jnp.asarray(logits), y, y2, 0.3), ref,
      rtol=1e-5)
