"""Stage 2's decoupled baselines (docs/method.md §8): cRT re-initialises and trains
only the classifier, LWS only the scale; the post-hoc methods choose τ on
validation and never look at test to do it."""

import functools
import json
import types

import jax
import numpy as np
import pytest

from lcreg_jax import config as config_lib
from lcreg_jax import errors
from lcreg_jax import optim
from lcreg_jax import train_state
from lcreg_jax.evaluate import posthoc as posthoc_lib
from lcreg_jax.models import network
from lcreg_jax.stages import common
from lcreg_jax.stages import stage2
from lcreg_jax.steps import retrain
from tests import tiny
from tests.steps.test_stage1 import batch

COUNTS = np.arange(10) * 10 + 5


def _config(method, latent=False):
  cfg = tiny.tiny_config()
  if not latent:
    cfg.model.latent.enabled = False
    cfg.model.classify_on = 'feature'
  cfg.data.val_per_class = 3
  cfg.stage2.method = method
  cfg.seed = 3
  return config_lib.resolve_and_validate(cfg, num_visible_devices=1)


def _stage1(cfg):
  """A stage-1 state whose BN statistics are not the initial ones."""
  model = network.make_model(cfg.model, 10)
  tx = optim.stage1_optimizer(cfg, lambda _: 0.1)
  state = train_state.create_train_state(
    model, jax.random.key(0), (8, 8, 1), tx, cfg.model
  )
  _, mutated = state.apply_fn(
    {'params': state.params, 'batch_stats': state.batch_stats},
    batch()['image'],
    train=True,
    mutable=['batch_stats'],
  )
  return state.replace(batch_stats=mutated['batch_stats'])


def _retrain(cfg, stage1_state, steps=3):
  model, params = stage2.initial_model(cfg, 10, (8, 8, 1), stage1_state.params)
  state = train_state.TrainState.create(
    apply_fn=model.apply,
    params=params,
    batch_stats=stage1_state.batch_stats,
    tx=optim.stage2_optimizer(cfg.stage2, 5, 2),
    cov={},
  )
  hp = retrain.RetrainHparams.from_config(cfg.stage2, COUNTS)
  step = jax.jit(functools.partial(retrain.retrain_step, hp=hp))
  start = state
  for i in range(steps):
    state, metrics = step(state, batch(seed=i))
    assert np.isfinite(metrics['loss'])
  return start, state, hp


def _flat(tree):
  return {
    jax.tree_util.keystr(p): np.asarray(v)
    for p, v in jax.tree_util.tree_leaves_with_path(tree)
  }


# With the latent module (LCReg's stage 1) the same holds for its classifier.
@pytest.mark.parametrize('latent', [False, True])
def test_crt_reinitialises_the_classifier_and_trains_only_it(latent):
  cfg = _config('crt', latent)
  s1 = _stage1(cfg)
  start, end, hp = _retrain(cfg, s1)
  # Plain CE, no shift-BN (the preset row's shift_bn is overridden).
  assert hp.loss == 'ce' and not hp.shift_bn
  assert set(start.params['head']) == {'fc'}  # no LWS scale
  fresh = train_state.init_variables(
    network.make_model(cfg.model, 10), jax.random.key(cfg.seed), (8, 8, 1)
  )
  for k in ('kernel', 'bias'):
    np.testing.assert_array_equal(
      start.params['head']['fc'][k], fresh['params']['head']['fc'][k]
    )
  assert not np.array_equal(
    start.params['head']['fc']['kernel'], s1.params['head']['fc']['kernel']
  )
  before, after = _flat(s1.params), _flat(end.params)
  for key, value in before.items():
    if "'head'" in key:
      assert not np.array_equal(
        after[key], start.params['head']['fc'][key.split("'")[-2]]
      ), key
    else:
      np.testing.assert_array_equal(after[key], value, err_msg=key)
  for key, value in _flat(s1.batch_stats).items():
    np.testing.assert_array_equal(_flat(end.batch_stats)[key], value)


def test_lws_learns_only_the_scale():
  cfg = _config('lws')
  s1 = _stage1(cfg)
  start, end, hp = _retrain(cfg, s1)
  assert hp.loss == 'ce' and not hp.shift_bn
  np.testing.assert_array_equal(start.params['head']['scale'], np.ones(10))
  assert not np.array_equal(end.params['head']['scale'], np.ones(10))
  before, after = _flat(s1.params), _flat(end.params)
  assert len(after) == len(before) + 1
  for key, value in before.items():  # the stage-1 classifier included
    np.testing.assert_array_equal(after[key], value, err_msg=key)
  for key, value in _flat(s1.batch_stats).items():
    np.testing.assert_array_equal(_flat(end.batch_stats)[key], value)


def _posthoc_case():
  """Validation and test outputs that prefer different τ (0 and 1).

  Logits (g, 0) with 0 < g < log π_0 - log π_1: τ = 0 predicts class 0,
  τ = 1 class 1. Features (f0, 2) with 2/9 < f0 < 2 under the kernel
  diag(3, 1/3): τ = 0 gives (3 f0, 2/3), class 0; τ = 1 (unit columns)
  gives (f0, 2), class 1. So top-1 is the class-0 share at τ = 0 and the
  class-1 share at τ = 1; validation is 80 % class 0, test 80 % class 1.
  """
  rng = np.random.default_rng(0)
  counts = np.array([90, 10])
  log_pi = np.log(counts / counts.sum())

  def split(tail_share, n=40):
    labels = (np.arange(n) < tail_share * n).astype(int)
    logits = np.zeros((n, 2))
    logits[:, 0] = rng.uniform(0.1, 0.9, n) * (log_pi[0] - log_pi[1])
    features = np.stack([rng.uniform(0.3, 1.9, n), np.full(n, 2.0)], 1)
    return dict(logits=logits, features=features, labels=labels)

  return counts, split(0.2), split(0.8)


@pytest.mark.parametrize('method', ['posthoc_la', 'tau_norm'])
def test_posthoc_chooses_tau_on_validation_not_test(
  method, monkeypatch, tmp_path
):
  counts, val, test = _posthoc_case()
  kernel = np.diag([3.0, 1 / 3]) if method == 'tau_norm' else np.eye(2)
  calls = []

  def fake_predict(ctx, state, split):
    calls.append(split)
    return dict(val=val, test=test)[split]

  chosen = []
  real_choose = posthoc_lib.choose_tau

  def spy_choose(logits_at, labels, *args):
    chosen.append(labels)
    assert calls == ['val']  # test not predicted before the choice
    return real_choose(logits_at, labels, *args)

  monkeypatch.setattr(common, 'predict', fake_predict)
  monkeypatch.setattr(posthoc_lib, 'choose_tau', spy_choose)
  cfg = tiny.tiny_config()
  cfg.stage2.method = method
  cfg.stage2.tau_step = 1.0
  cfg.stage2.tau_max = 1.0
  info = types.SimpleNamespace(class_counts=counts, num_classes=2)
  ctx = types.SimpleNamespace(
    config=cfg, info=info, stage_dir=lambda s: tmp_path / s
  )
  state = types.SimpleNamespace(params={'head': {'fc': {'kernel': kernel}}})

  def top1(split, tau):
    if method == 'tau_norm':
      z = split['features'] @ (kernel / np.linalg.norm(kernel, axis=0) ** tau)
    else:
      z = split['logits'] - tau * np.log(counts / counts.sum())
    return (z.argmax(1) == split['labels']).mean()

  val_best = int(top1(val, 1) > top1(val, 0))
  test_best = int(top1(test, 1) > top1(test, 0))
  assert val_best != test_best  # the case is what it claims
  rep = stage2.posthoc(ctx, state)
  assert calls == ['val', 'test']
  np.testing.assert_array_equal(chosen[0], val['labels'])
  assert rep['tau'] == val_best and rep['method'] == method
  assert rep['stage'] == 'stage2'
  assert rep['top1'] == pytest.approx(top1(test, val_best))
  assert (tmp_path / 'stage2' / 'report.json').exists()


COUNTS4 = np.array([500, 100, 25, 10])


def _head_biased_val(val_counts, seed=1):
  """Validation outputs of a model biased to the head classes: logits
  with + log π_c, features under a kernel whose column norms grow with the
  class count. Larger τ helps the tail classes and costs the head ones."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(4), val_counts)
  onehot = np.eye(4)[labels]
  logits = (
    1.5 * onehot
    + rng.normal(size=onehot.shape)
    + np.log(COUNTS4 / COUNTS4.sum())
  )
  features = 1 + onehot + 0.5 * rng.normal(size=onehot.shape)
  return dict(logits=logits, features=features, labels=labels)


def _numpy_choice(val, method, kernel, grid):
  """(τ, curves) by a direct float64 computation: per-class accuracy class
  by class, the first best of each curve."""
  curves = {'top1': [], 'class_mean_top1': []}
  for tau in grid:
    if method == 'tau_norm':
      z = val['features'] @ (kernel / np.linalg.norm(kernel, axis=0) ** tau)
    else:
      z = val['logits'] - tau * np.log(COUNTS4 / COUNTS4.sum())
    hit = z.argmax(1) == val['labels']
    curves['top1'].append(hit.mean())
    curves['class_mean_top1'].append(
      np.mean(
        [hit[val['labels'] == c].mean() for c in np.unique(val['labels'])]
      )
    )
  return {k: float(grid[int(np.argmax(v))]) for k, v in curves.items()}, curves


def _posthoc_report(method, metric, val, kernel, tmp_path, monkeypatch):
  test = _head_biased_val([5, 5, 5, 5], seed=2)
  monkeypatch.setattr(
    common, 'predict', lambda ctx, state, split: dict(val=val, test=test)[split]
  )
  cfg = tiny.tiny_config()
  cfg.stage2.method = method
  cfg.stage2.tau_step = 0.25
  cfg.stage2.tau_max = 2.0
  cfg.eval.select_metric = metric
  ctx = types.SimpleNamespace(
    config=cfg,
    info=types.SimpleNamespace(class_counts=COUNTS4, num_classes=4),
    stage_dir=lambda s: tmp_path / metric / s,
  )
  state = types.SimpleNamespace(params={'head': {'fc': {'kernel': kernel}}})
  return stage2.posthoc(ctx, state)


@pytest.mark.parametrize('method', ['posthoc_la', 'tau_norm'])
def test_posthoc_tau_by_the_class_mean_on_an_unbalanced_split(
  method, monkeypatch, tmp_path
):
  """The carved split's share of each class (20, 20, 5, 2 images): the mean
  of per-class top-1 chooses another τ than top-1 over images, each as a
  NumPy computation does."""
  val = _head_biased_val(np.minimum(20, COUNTS4 // 5))
  kernel = np.diag(np.sqrt(COUNTS4 / COUNTS4.min()))
  grid = posthoc_lib.tau_grid(2.0, 0.25)
  want, curves = _numpy_choice(val, method, kernel, grid)
  assert want['top1'] != want['class_mean_top1']  # the case is what it says
  for metric, name in (
    ('class_mean', 'class_mean_top1'),
    ('image_mean', 'top1'),
  ):
    rep = _posthoc_report(method, metric, val, kernel, tmp_path, monkeypatch)
    assert rep['tau'] == want[name] and rep['select_metric'] == metric
    i = int(np.flatnonzero(grid == rep['tau'])[0])
    for key in ('top1', 'class_mean_top1'):
      np.testing.assert_allclose(
        rep[f'val_{key}_by_tau'], curves[key], rtol=1e-12
      )
      assert rep[f'val_{key}'] == pytest.approx(curves[key][i], rel=1e-12)
  saved = json.load(open(tmp_path / 'class_mean' / 'stage2' / 'report.json'))
  assert saved['select_metric'] == 'class_mean'
  assert saved['tau'] == want['class_mean_top1']


@pytest.mark.parametrize('method', ['posthoc_la', 'tau_norm'])
def test_posthoc_tau_is_the_same_by_either_metric_on_a_balanced_split(
  method, monkeypatch, tmp_path
):
  val = _head_biased_val([10, 10, 10, 10])
  kernel = np.diag(np.sqrt(COUNTS4 / COUNTS4.min()))
  reps = [
    _posthoc_report(method, m, val, kernel, tmp_path, monkeypatch)
    for m in ('class_mean', 'image_mean')
  ]
  assert reps[0]['tau'] == reps[1]['tau']
  np.testing.assert_allclose(
    reps[0]['val_class_mean_top1_by_tau'],
    reps[0]['val_top1_by_tau'],
    rtol=1e-12,
  )
  # Several τ are on the curve (else any choice would pass).
  assert len(set(reps[0]['val_top1_by_tau'])) > 2


def test_posthoc_needs_a_validation_split():
  cfg = tiny.tiny_config()
  cfg.stage2.method = 'tau_norm'
  with pytest.raises(errors.ConfigError, match='data.val_per_class'):
    config_lib.resolve_and_validate(cfg, num_visible_devices=1)
  cfg.data.val_per_class = 2
  config_lib.resolve_and_validate(cfg, num_visible_devices=1)
