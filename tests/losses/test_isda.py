"""ISDA bound: σ² against the Monte-Carlo MGF, the bound against Monte-Carlo CE, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from lcreg_jax import losses


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
  table = np.asarray(
    losses.isda_sigma2_table(jnp.asarray(w), jnp.asarray(cov), lam)
  )
  rng = np.random.default_rng(1)
  for m in range(w.shape[1]):
    full = np.diag(cov[m]) if diagonal else cov[m]
    eps = rng.multivariate_normal(np.zeros(w.shape[0]), lam * full, 200_000)
    for j in range(w.shape[1]):
      mc = np.mean(np.exp(eps @ (w[:, j] - w[:, m])))
      np.testing.assert_allclose(
        2 * np.log(mc), table[m, j], rtol=0.05, atol=0.02
      )


def test_isda_bound_upper_bounds_monte_carlo_ce():
  w, cov, feats, labels = _problem(False)
  lam = 0.5
  logits = feats @ w
  aug = losses.isda_augmented_logits(
    jnp.asarray(logits),
    jnp.asarray(w),
    jnp.asarray(cov),
    jnp.asarray(labels),
    lam,
  )
  bound = -scipy.special.log_softmax(np.asarray(aug, np.float64), -1)[
    np.arange(len(labels)), labels
  ]
  rng = np.random.default_rng(2)
  for i, y in enumerate(labels):
    eps = rng.multivariate_normal(np.zeros(w.shape[0]), lam * cov[y], 50_000)
    pert = (feats[i] + eps) @ w
    mc = -scipy.special.log_softmax(pert, -1)[:, y].mean()
    assert mc <= bound[i] + 1e-3
  # The bound is the CE of logits shifted by σ²/2 of the true class' row.
  table = np.asarray(losses.isda_sigma2_table(w, cov, lam))
  np.testing.assert_allclose(
    aug, logits + table[labels] / 2, rtol=1e-5, atol=1e-5
  )
  assert np.allclose(np.diag(table), 0, atol=1e-6)


def test_isda_gradient_flows_to_weights_not_covariance():
  w, cov, feats, labels = _problem(False)

  def f(w_, cov_):
    return losses.isda_augmented_logits(
      jnp.asarray(feats) @ w_, w_, cov_, jnp.asarray(labels), 0.5
    ).sum()

  gw, gc = jax.grad(f, argnums=(0, 1))(jnp.asarray(w), jnp.asarray(cov))
  assert np.abs(gw).sum() > 0 and np.abs(gc).sum() == 0
