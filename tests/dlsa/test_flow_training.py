"""Flow training: pair sampling, class weights, purity metrics, the loss
against NumPy, and train_flow through the loop."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from lcreg_jax.config.dlsa import dlsa_config
from lcreg_jax.dlsa import flow as flow_lib
from lcreg_jax.dlsa import flow_training as train_lib


def test_class_nll_weights_by_hand():
  labels = np.array([0, 0, 0, 0, 1, 1, 2])  # n = 4, 2, 1; n_max = 4.
  # Raw (4/n)^2 = 1, 4, 16; Σ n_c w_c = 4 + 8 + 16 = 28 -> scale 7 / 28.
  np.testing.assert_allclose(train_lib.class_nll_weights(labels, 3),
                             [0.25, 1.0, 4.0], rtol=1e-6)
  # Absent class -> 0; power 1: raw 1, 2, (absent), 4 -> Σ n w = 4+4+4 = 12.
  np.testing.assert_allclose(
      train_lib.class_nll_weights(np.array([0, 0, 0, 0, 1, 1, 3]), 4, 1.0),
      [7 / 12, 14 / 12, 0.0, 28 / 12], rtol=1e-6)


def test_sample_pairs_distribution():
  counts = np.array([5, 3, 2])
  labels = np.repeat(np.arange(3), counts)
  padded = np.concatenate([labels, np.full(6, 2)])  # Padding never drawn.
  starts = np.cumsum(counts) - counts
  pos, neg = jax.jit(train_lib.sample_pairs, static_argnums=5)(
      jax.random.PRNGKey(0), jnp.asarray(padded), 10, jnp.asarray(starts),
      jnp.asarray(counts), 40000)
  pos, neg = np.asarray(pos), np.asarray(neg)
  assert pos.max() < 10 and neg.max() < 10
  assert np.all(labels[pos] != labels[neg])
  # Positives uniform over samples.
  np.testing.assert_allclose(np.bincount(pos, minlength=10) / pos.size,
                             0.1, atol=0.01)
  # Negatives uniform over the samples of the other classes.
  for c in range(3):
    others = np.flatnonzero(labels != c)
    freq = np.bincount(neg[labels[pos] == c], minlength=10)[others]
    np.testing.assert_allclose(freq / freq.sum(), 1 / others.size, atol=0.02)


def test_purity_metrics_by_hand():
  clusters = np.array([0, 0, 0, 1, 1, 2])
  labels = np.array([0, 0, 1, 1, 2, 2])
  # Cluster majorities: 2 of 3, 1 of 2, 1 of 1 -> 4 / 6.
  assert train_lib.cluster_purity(clusters, labels, 4, 3) == pytest.approx(
      4 / 6)
  # Training majorities: cluster 0 -> 0, cluster 1 -> 1 (tie -> lowest),
  # cluster 2 -> 2, cluster 3 empty (always wrong).
  val_c = np.array([0, 0, 1, 2, 3])
  val_y = np.array([0, 1, 1, 1, 0])
  assert train_lib.heldout_purity(clusters, labels, val_c, val_y, 4,
                                  3) == pytest.approx(2 / 5)


def _loss_setup(purity_type='hinge_ce', center_std=0.05, seed=0):
  cfg = dlsa_config()
  cfg.num_clusters, cfg.purity_type, cfg.center_std = 6, purity_type, center_std
  cfg.purity_margin, cfg.purity_weight, cfg.balance_weight = 1.5, 0.7, 0.3
  dim, b = 3, 8
  model = flow_lib.MAF(dim)
  rng = np.random.default_rng(seed)
  xp = jnp.asarray(rng.normal(size=(b, dim)), jnp.float32)
  xn = jnp.asarray(rng.normal(size=(b, dim)) + 1, jnp.float32)
  v = train_lib._flow_init_fn(model)(jax.random.PRNGKey(seed), xp)  # Jitted.
  centers = flow_lib.make_centers(jax.random.PRNGKey(1), 6, dim, center_std)
  wp = jnp.asarray(rng.uniform(0.5, 2, b), jnp.float32)
  valid = jnp.asarray(np.r_[np.ones(b - 1), 0.0], jnp.float32)
  hp = train_lib.FlowHParams.from_config(cfg, dim)
  return cfg, model, v, centers, (xp, xn, wp, valid), hp


def test_flow_loss_matches_numpy():
  cfg, model, v, centers, (xp, xn, wp, valid), hp = _loss_setup()
  loss_fn = jax.jit(train_lib.flow_loss_fn(model, hp))
  ema0 = jnp.zeros(6)
  total, (_, ema, m) = loss_fn(v['params'], v['batch_stats'], centers, xp, xn,
                               wp, valid, ema0, 1.0)
  (z, logdet), _ = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=['batch_stats']))(v, jnp.concatenate([xp, xn]))
  z, logdet = np.asarray(z, np.float64), np.asarray(logdet, np.float64)
  c = np.asarray(centers, np.float64)
  ell = (-0.5 * ((z[:, None] - c[None]) ** 2).sum(-1) -
         1.5 * math.log(2 * math.pi))
  logp = special.logsumexp(ell, 1) - math.log(6) + logdet
  b = 8
  nll = -np.mean(np.asarray(wp) * logp[:b]) / 3  # Nats per dimension.
  logq = ell - special.logsumexp(ell, 1, keepdims=True)
  p = np.exp(logq)
  ce = -(p[:b] * logq[b:]).sum(1)
  hinge = np.maximum(math.log(6) + 1.5 - ce, 0)
  purity = (hinge * np.asarray(valid)).sum() / np.asarray(valid).sum()
  pbar = p[:b].mean(0)  # ema_hat at t = 1 after bias correction.
  balance = np.sum(pbar * np.log(pbar)) + math.log(6)
  np.testing.assert_allclose(m['nll'], nll, rtol=1e-4)
  np.testing.assert_allclose(m['purity'], purity, rtol=1e-4)
  np.testing.assert_allclose(m['balance'], balance, rtol=1e-3, atol=1e-6)
  np.testing.assert_allclose(total, nll + 0.7 * purity + 0.3 * balance,
                             rtol=1e-4)
  np.testing.assert_allclose(ema, (1 - cfg.ema_decay) * pbar, rtol=1e-4)


@pytest.mark.parametrize('purity_type', ['hinge_ce', 'overlap'])
def test_purity_term_separates_pairs(purity_type):
  """Descending the purity term alone lowers P(same cluster) of pairs."""
  _, model, v, centers, (xp, xn, wp, valid), hp = _loss_setup(
      purity_type, center_std=1.0, seed=3)
  loss_fn = train_lib.flow_loss_fn(model, hp)

  def purity(params):
    return loss_fn(params, v['batch_stats'], centers, xp, xn, wp, valid,
                   jnp.zeros(6), 1.0)[1][2]['purity']

  def overlap(params):
    (z, _), _ = model.apply({'params': params,
                             'batch_stats': v['batch_stats']},
                            jnp.concatenate([xp, xn]), train=True,
                            mutable=['batch_stats'])
    q = jax.nn.softmax(flow_lib.component_log_likelihoods(z, centers), -1)
    return jnp.sum(q[:8] * q[8:], -1)[:-1].mean()  # Last pair is invalid.

  @jax.jit
  def step(params):
    g = jax.grad(purity)(params)
    return jax.tree.map(lambda p, d: p - 0.3 * d, params, g)

  params = v['params']
  overlap = jax.jit(overlap)
  before = float(overlap(params))
  for _ in range(30):
    params = step(params)
  assert float(overlap(params)) < 0.8 * before
