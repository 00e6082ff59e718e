"""Likelihood routing, cluster priors and the stage classifiers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from lcreg_jax.dlsa import routing
from lcreg_jax.dlsa.config import get_dlsa_config


@pytest.mark.parametrize('n,fraction,expected', [
    (10, 0.3, 3), (11, 0.3, 4), (100, 0.3, 30), (7, 0.5, 4), (2, 0.9, 1),
    (1, 0.3, 0), (0, 0.3, 0), (5, 0.999, 4)])
def test_num_routed_rule(n, fraction, expected):
  # min(ceil(f n), n - 1), at least 0.
  assert routing.num_routed(n, fraction) == expected


def test_routing_stages_are_exact_disjoint_and_cover():
  rng = np.random.default_rng(0)
  n, depth, fraction = 1003, 3, 0.3
  logp = rng.normal(size=n).astype(np.float32)
  logp[:40] = logp[40]  # Ties must not change the count.
  val_logp = rng.normal(size=301).astype(np.float32)
  remaining = np.ones(n, bool)
  val_remaining = np.ones(val_logp.size, bool)
  stage = np.full(n, depth)
  val_stage = np.full(val_logp.size, depth)
  expected_left = n
  for s in range(depth):
    routed, thr = routing.route_stage(logp, remaining, fraction)
    k = int(np.ceil(fraction * expected_left))
    assert routed.sum() == k
    assert not (routed & ~remaining).any()  # Only from what is left.
    # The top of the remaining ones, threshold = lowest routed value.
    assert logp[routed].min() == thr
    assert logp[remaining & ~routed].max() <= thr
    val_routed = routing.route_by_threshold(val_logp, val_remaining, thr)
    np.testing.assert_array_equal(val_routed,
                                  val_remaining & (val_logp >= thr))
    stage[routed], val_stage[val_routed] = s, s
    remaining &= ~routed
    val_remaining &= ~val_routed
    expected_left -= k
  assert remaining.sum() == expected_left > 0
  # Each sample is in exactly one route (stages < depth, or the final one).
  for st, rem in ((stage, remaining), (val_stage, val_remaining)):
    np.testing.assert_array_equal(st == depth, rem)
    assert sum((st == s).sum() for s in range(depth + 1)) == st.size


def test_cluster_prior_matrix_by_hand():
  clusters = np.array([0, 0, 0, 2, 2, 3])
  labels = np.array([1, 1, 0, 2, 2, 0])
  prior = routing.cluster_prior_matrix(clusters, labels, 5, 3)
  expected = np.array([[1 / 3, 2 / 3, 0], [0, 0, 0], [0, 0, 1], [1, 0, 0],
                       [0, 0, 0]])
  np.testing.assert_allclose(prior, expected, rtol=1e-6)


def test_balanced_softmax_matches_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(9, 4)).astype(np.float32)
  labels = np.array([0, 1, 3, 3, 0, 1, 1, 0, 3])
  counts = np.array([50.0, 7.0, 0.0, 2.0])  # Class 2 absent.
  tiny = 1e-12
  adj = logits.astype(np.float64) + np.log(counts + tiny)
  ref = np.mean(special.logsumexp(adj, 1) - adj[np.arange(9), labels])
  got = routing.balanced_softmax_loss(jnp.asarray(logits), jnp.asarray(labels),
                                      jnp.asarray(counts), tiny)
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  # With equal counts it is plain cross-entropy.
  ce = np.mean(special.logsumexp(logits, 1) - logits[np.arange(9), labels])
  np.testing.assert_allclose(
      routing.balanced_softmax_loss(logits, labels, np.full(4, 3.0)), ce,
      rtol=1e-5)


def test_inference_offset():
  off = routing.inference_offset(np.array([3, 0, 1]), True, 1e-12)
  np.testing.assert_allclose(off, [0.0, np.log(1e-12), 0.0], rtol=1e-6,
                             atol=1e-9)
  np.testing.assert_array_equal(
      routing.inference_offset(np.array([3, 0]), False, 1e-12), 0.0)


def _small_config(**kw):
  cfg = get_dlsa_config()
  cfg.classifier_steps, cfg.eval_every, cfg.classifier_batch_size = 60, 30, 32
  cfg.classifier_lr = 0.05
  cfg.update(kw)
  return cfg


@pytest.mark.parametrize('mask_absent', [True, False])
def test_classifier_with_absent_classes_trains(mask_absent):
  rng = np.random.default_rng(2)
  c, d = 5, 3
  means = 3 * rng.normal(size=(c, d))
  y = rng.choice([0, 2, 4], size=80)  # Classes 1 and 3 never appear.
  x = (means[y] + rng.normal(size=(80, d))).astype(np.float32)
  zp = np.concatenate([x, np.eye(c)[y] * 0.5], 1).astype(np.float32)
  yv = np.array([0, 2, 4, 1])
  xv = (means[yv]).astype(np.float32)
  zpv = np.concatenate([xv, np.zeros((4, c))], 1).astype(np.float32)
  model = routing.ClusterAidedClassifier(c)
  logs = []
  params, offset, info = routing.train_classifier(
      model, (x, zp), y, (xv, zpv), yv, num_classes=c,
      config=_small_config(mask_absent_classes=mask_absent),
      key=jax.random.PRNGKey(0), pad_train=100, pad_val=10, log=logs.append)
  assert np.isfinite(info['final_loss'])
  assert all(np.all(np.isfinite(l)) for l in jax.tree.leaves(params))
  assert set(params['params']) == {'lin_x', 'lin_zp'}
  probs = routing.predict_probs(model, params, offset, (xv, zpv), chunk=3)
  assert probs.shape == (4, c) and np.all(np.isfinite(probs))
  np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
  assert info['val_accuracy'] >= 0.75  # The three seen classes are easy.
  if mask_absent:
    assert probs[:, [1, 3]].max() < 1e-9
    assert np.argmax(probs[3]) != 1  # Unseen class never predicted.


def test_classifier_selects_on_validation_and_handles_no_val():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(50, 2)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)
  model = routing.LinearClassifier(2)
  logs = []
  params, offset, info = routing.train_classifier(
      model, (x,), y, (np.zeros((0, 2), np.float32),), np.zeros(0, np.int32),
      num_classes=2, config=_small_config(), key=jax.random.PRNGKey(0),
      log=logs.append)
  assert np.isnan(info['val_accuracy']) and info['best_step'] == 60
  assert any('no validation samples' in l for l in logs)
  acc = (routing.predict_probs(model, params, offset, (x,)).argmax(1) == y)
  assert acc.mean() > 0.9
