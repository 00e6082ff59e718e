"""Flow training pieces and run_dlsa end to end."""

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import special

from lcreg_jax.dlsa import DLSAResult, run_dlsa
from lcreg_jax.dlsa import flow as flow_lib
from lcreg_jax.dlsa import train as train_lib
from lcreg_jax.dlsa.config import get_dlsa_config
from lcreg_jax.errors import ConfigError


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
  cfg = get_dlsa_config()
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


def _long_tailed(rng, counts, means, scale=1.0):
  y = np.repeat(np.arange(len(counts)), counts)
  x = means[y] + scale * rng.normal(size=(y.size, means.shape[1]))
  perm = rng.permutation(y.size)
  return x[perm].astype(np.float32), y[perm]


@pytest.fixture(scope='module')
def synthetic():
  rng = np.random.default_rng(0)
  c, d = 4, 8
  means = 2.5 * rng.normal(size=(c, d))
  return (_long_tailed(rng, [400, 150, 60, 25], means),
          _long_tailed(rng, [40] * c, means),
          _long_tailed(rng, [100] * c, means), c)


def _tiny_config(**kw):
  cfg = get_dlsa_config()
  cfg.update(dict(num_clusters=16, flow_steps=60, flow_batch_size=64,
                  eval_every=30, classifier_steps=120,
                  classifier_batch_size=64, classifier_lr=0.05, depth=2,
                  eval_chunk=1024))
  cfg.update(kw)
  return cfg


@pytest.fixture(scope='module')
def dlsa_run(synthetic, tmp_path_factory):
  train, val, test, c = synthetic
  workdir = str(tmp_path_factory.mktemp('dlsa'))
  logs = []
  res = run_dlsa(_tiny_config(), train=train, val=val, test=test,
                 num_classes=c, workdir=workdir, log=logs.append)
  return res, workdir, logs


def test_run_dlsa_end_to_end(synthetic, dlsa_run):
  _, _, (xt, yt), c = synthetic
  res, workdir, logs = dlsa_run
  assert isinstance(res, DLSAResult)
  assert res.test_probs.shape == (yt.size, c)
  assert res.test_probs.dtype == np.float32
  np.testing.assert_allclose(res.test_probs.sum(1), 1, rtol=1e-5)
  assert set(np.unique(res.test_stage)) <= {0, 1, 2}
  rep = res.stage_report
  assert sorted(rep) == [0, 1, 2]
  assert sum(r['share'] for r in rep.values()) == pytest.approx(1.0)
  # 635 training samples: ceil(0.3 · 635) = 191, ceil(0.3 · 444) = 134.
  assert [rep[s]['train_routed'] for s in range(3)] == [191, 134, 310]
  for s, r in rep.items():
    on = res.test_stage == s
    assert r['share'] == pytest.approx(on.mean())
    if on.any():
      assert r['accuracy'] == pytest.approx(
          np.mean(res.test_probs[on].argmax(1) == yt[on]))
  acc = np.mean(res.test_probs.argmax(1) == yt)
  assert acc > 0.85 and res.val_accuracy > 0.85  # Chance is 0.25.
  with open(os.path.join(workdir, 'dlsa_report.json')) as f:
    assert json.load(f)['stages']['2']['train_routed'] == 310
  for name in ('dlsa_flow_0.npz', 'dlsa_classifier_0.npz',
               'dlsa_classifier_1.npz', 'dlsa_classifier_final.npz'):
    assert os.path.exists(os.path.join(workdir, name))
  assert any('selected step' in l for l in logs)


def test_run_dlsa_never_looks_at_test_labels(synthetic, dlsa_run, tmp_path):
  train, val, (xt, yt), c = synthetic
  shuffled = np.random.default_rng(5).permutation(yt)
  res = run_dlsa(_tiny_config(), train=train, val=val, test=(xt, shuffled),
                 num_classes=c, workdir=str(tmp_path), log=lambda _: None)
  np.testing.assert_array_equal(res.test_probs, dlsa_run[0].test_probs)
  np.testing.assert_array_equal(res.test_stage, dlsa_run[0].test_stage)


def test_run_dlsa_switches(synthetic, tmp_path):
  train, val, (xt, yt), c = synthetic
  cfg = ml_collections.ConfigDict({'dlsa': _tiny_config(
      use_flow_latent=True, flow_per_stage=True, flow_select_metric='heldout',
      purity_type='overlap', flow_schedule='constant',
      final_balanced_softmax=False, standardize=False)})
  logs = []
  res = run_dlsa(cfg, train=train, val=val, test=(xt, yt), num_classes=c,
                 workdir=str(tmp_path), log=logs.append)
  rep = res.stage_report
  assert [rep[s]['train_routed'] for s in range(3)] == [191, 134, 310]
  # A second flow, trained on the 444 samples stage 0 left.
  assert any(l.startswith('flow[1]: n=444 ') for l in logs)
  assert os.path.exists(os.path.join(str(tmp_path), 'dlsa_flow_1.npz'))
  assert np.mean(res.test_probs.argmax(1) == yt) > 0.85


def test_config_errors(synthetic, tmp_path):
  train, val, test, c = synthetic
  with pytest.raises(ConfigError, match='flow_stepz'):
    run_dlsa({'flow_stepz': 3}, train=train, val=val, test=test,
             num_classes=c, workdir=str(tmp_path))
  with pytest.raises(ConfigError, match='top_fraction'):
    run_dlsa({'top_fraction': 1.0}, train=train, val=val, test=test,
             num_classes=c, workdir=str(tmp_path))
