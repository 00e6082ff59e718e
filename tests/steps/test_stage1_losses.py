"""The stage-1 step with docs/method.md §8's baseline losses: each stage1.loss is
wired to its function, DRW switches the weights on at exactly its step,
class-wise ISDA matches a NumPy transcription of one step, and a run killed
across the DRW switch resumes to the uninterrupted result."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lcreg_jax import config as config_lib
from lcreg_jax import covariance
from lcreg_jax import losses
from lcreg_jax import optim
from lcreg_jax import stages
from lcreg_jax import train_state
from lcreg_jax.models import network
from lcreg_jax.steps import stage1
from tests import killing
from tests import tiny

COUNTS = (40, 25, 15, 9, 6, 4, 3, 2, 1, 1)
TOTAL, SPE = 6, 3


def _batch(n=16, seed=0):
  rng = np.random.default_rng(seed)
  return dict(
    image=jnp.asarray(rng.normal(size=(n, 8, 8, 1)), jnp.float32),
    label=jnp.asarray(rng.integers(0, 10, n), jnp.int32),
  )


def _setup(head='linear', **s1):
  cfg = tiny.tiny_config()
  cfg.model.latent.enabled = False
  cfg.model.classify_on = 'feature'
  cfg.model.head = head
  isda = s1.pop('class_isda', 'none')
  cfg.model.class_isda = isda
  cfg.stage1.update(**s1)
  resolved = config_lib.resolve_and_validate(cfg, num_visible_devices=1)
  model = network.make_model(resolved.model, 10)
  tx = optim.stage1_optimizer(
    resolved, optim.stage1_schedule(resolved.stage1, SPE, TOTAL)
  )
  state = train_state.create_train_state(
    model, jax.random.key(0), (8, 8, 1), tx, resolved.model
  )
  hp = stage1.Stage1Hparams.from_config(resolved, TOTAL, SPE, COUNTS)
  return state, hp


def _cls_losses(state, hp, steps):
  """cls_loss of one step from `state` at each of `steps` (one compile)."""
  fn = jax.jit(lambda s, b: stage1.train_step(s, b, hp=hp))
  return [
    float(
      fn(state.replace(step=jnp.asarray(t, jnp.int32)), _batch())[1]['cls_loss']
    )
    for t in steps
  ]


def _forward(state, images):
  out, _ = state.apply_fn(
    {'params': state.params, 'batch_stats': state.batch_stats},
    images,
    train=True,
    mutable=['batch_stats'],
  )
  return jax.tree.map(np.asarray, out)


def _np_ce(z, y):
  z = z.astype(np.float64)
  z = z - z.max(-1, keepdims=True)
  return np.log(np.exp(z).sum(-1)) - z[np.arange(len(y)), y]


def test_each_loss_is_the_configured_function():
  state, hp = _setup(mixup_alpha=0.0, la_tau=0.5)
  b = _batch()
  z = jnp.asarray(_forward(state, b['image'])['logits'])
  y = b['label']
  want = {
    'ce': losses.cross_entropy(z, y),
    'focal': losses.focal_loss(z, y, 1.0),
    'ldam': losses.ldam_loss(z, y, COUNTS, 0.5, 30.0),
    'balanced_softmax': losses.balanced_softmax_loss(z, y, COUNTS),
    'logit_adjusted': losses.logit_adjusted_loss(z, y, COUNTS, 0.5),
  }
  got = {
    name: float(
      stage1.class_loss(dataclasses.replace(hp, loss=name), z, y, None)
    )
    for name in want
  }
  for name in want:
    np.testing.assert_allclose(got[name], float(want[name]), rtol=1e-6)
  assert len({round(v, 5) for v in got.values()}) == len(got)
  # And the step trains on it (no mixup: λ = 1).
  [focal] = _cls_losses(state, dataclasses.replace(hp, loss='focal'), [0])
  np.testing.assert_allclose(focal, got['focal'], rtol=2e-5)


def test_ldam_on_the_normed_head_puts_the_margins_on_the_cosines():
  # LDAM-DRW's form: CE(s · (cos - m_y e_y)) with the head's logits s · cos.
  state, hp = _setup(head='normed', mixup_alpha=0.0, loss='ldam')
  b = _batch()
  out = _forward(state, b['image'])
  y = np.asarray(b['label'])
  f = out['features'].astype(np.float64)
  w = np.asarray(state.params['head']['fc']['kernel'], np.float64)
  cos = (f / np.linalg.norm(f, axis=1, keepdims=True)) @ (
    w / np.linalg.norm(w, axis=0, keepdims=True)
  )
  np.testing.assert_allclose(out['logits'], 30.0 * cos, rtol=1e-4, atol=1e-4)
  m = losses.ldam_margins(COUNTS, 0.5).astype(np.float64)
  z = cos.copy()
  z[np.arange(len(y)), y] -= m[y]
  want = _np_ce(30.0 * z, y).mean()
  [got] = _cls_losses(state, hp, [0])
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_drw_switches_the_weights_on_at_exactly_its_step():
  # drw_epoch 1 x 3 steps per epoch: step 2 unweighted, step 3 weighted.
  state, drw = _setup(mixup_alpha=0.0, reweight='drw', drw_epoch=1.0)
  assert drw.drw_step == 3
  eff = losses.effective_number_weights(COUNTS, 0.9999)
  np.testing.assert_array_equal(
    np.asarray(stage1.class_weights(drw, 2)), np.ones(10)
  )
  np.testing.assert_array_equal(np.asarray(stage1.class_weights(drw, 3)), eff)
  b = _batch()
  y = np.asarray(b['label'])
  ce = _np_ce(_forward(state, b['image'])['logits'], y)
  before, at = _cls_losses(state, drw, [2, 3])
  np.testing.assert_allclose(before, ce.mean(), rtol=2e-5)
  np.testing.assert_allclose(at, (eff[y] * ce).sum() / eff[y].sum(), rtol=2e-5)
  assert abs(at - before) > 1e-3


def test_class_isda_step_matches_numpy():
  state, hp = _setup(mixup_alpha=0.0, class_isda='diagonal')
  assert state.cov.cov.shape == (10, 64)  # (C, D) diagonal moments
  step = 3  # λ = 0.5 · 3 / 6
  b = _batch()
  out = _forward(state, b['image'])
  f, z = out['features'].astype(np.float64), out['logits'].astype(np.float64)
  y = np.asarray(b['label'])
  w = np.asarray(state.params['head']['fc']['kernel'], np.float64)
  # ISDA: this batch's per-class moments (the state starts empty).
  var = np.zeros((10, 64))
  for c in set(y):
    var[c] = f[y == c].var(0)
  diff = w[None] - w.T[y][:, :, None]  # (B, D, C)
  sigma2 = 0.25 * np.einsum('bdj,bd,bdj->bj', diff, var[y], diff)
  want = _np_ce(z + 0.5 * sigma2, y).mean()
  new, metrics = jax.jit(lambda s, bb: stage1.train_step(s, bb, hp=hp))(
    state.replace(step=jnp.asarray(step, jnp.int32)), b
  )
  np.testing.assert_allclose(float(metrics['cls_loss']), want, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(new.cov.cov), var, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(
    np.asarray(new.cov.count), np.bincount(y, minlength=10)
  )
  assert isinstance(new.cov, covariance.CovarianceState)


def _stage1_params(workdir):
  directory = os.path.join(workdir, 'stage1', 'checkpoints')
  step = max(int(p) for p in os.listdir(directory) if p.isdigit())
  assert step == 6
  return ocp.StandardCheckpointer().restore(
    os.path.join(directory, str(step), 'default')
  )['params']


@pytest.mark.slow
def test_drw_run_killed_across_the_switch_resumes_exactly(tmp_path):
  # Tiny stage 1: 6 steps of 36 per epoch, checkpoints every 2 steps; the
  # weights switch on at step round(0.0834 * 36) = 3.
  def run(workdir, kill_at=None):
    cfg = tiny.tiny_config()
    cfg.stage2.enabled = False
    cfg.stage1.update(loss='focal', reweight='drw', drw_epoch=0.0834)
    return stages.train_and_evaluate(
      cfg, str(workdir), hooks=[killing.kill_at(*kill_at)] if kill_at else []
    )

  run(tmp_path / 'straight')
  killed = tmp_path / 'killed'
  with pytest.raises(killing.Kill):
    run(killed, kill_at=('stage1', 3))  # saved step 2, before the switch
  with pytest.raises(killing.Kill):
    run(killed, kill_at=('stage1', 5))  # resumed across it; saved step 4
  run(killed)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
    _stage1_params(killed),
    _stage1_params(tmp_path / 'straight'),
  )


@pytest.mark.slow
def test_class_isda_moments_are_checkpointed_and_stage2_restores_them(tmp_path):
  cfg = tiny.tiny_config()
  cfg.model.latent.enabled = False
  cfg.model.classify_on = 'feature'
  cfg.model.class_isda = 'full'
  cfg.stage1.mixup_alpha = 0.0
  rows = stages.train_and_evaluate(cfg, str(tmp_path))
  assert set(rows) == {'stage1', 'stage2'}
  directory = tmp_path / 'stage1' / 'checkpoints'
  saved = ocp.StandardCheckpointer().restore(directory / '6' / 'default')
  # 6 steps of 16 images: every image counted once in its class's moments.
  assert saved['cov']['count'].sum() == 6 * 16
  assert saved['cov']['cov'].shape == (10, 64, 64)
