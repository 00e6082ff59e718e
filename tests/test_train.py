import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lcreg_jax import parallel
from lcreg_jax import retrain
from lcreg_jax import run
from lcreg_jax import train
from lcreg_jax.models import network
from tests import tiny


def _batch(n=16, size=8, seed=0):
  rng = np.random.default_rng(seed)
  return dict(image=jnp.asarray(rng.normal(size=(n, size, size, 1)),
                                jnp.float32),
              label=jnp.asarray(rng.integers(0, 10, n), jnp.int32))


def _hp(cfg, total=10, **kw):
  base = dict(alpha=cfg.stage1.alpha, beta=cfg.stage1.beta,
              gamma=cfg.stage1.gamma, mixup_alpha=cfg.stage1.mixup_alpha,
              isda_lambda0=cfg.stage1.isda_lambda0, total_steps=total,
              recon_normalize=False, recon_temperature=1.0,
              explicit_latent_aug=False)
  base.update(kw)
  return train.Stage1Hparams(**base)


def _one_step(cfg, mesh, hp, steps=1):
  model = network.make_model(cfg.model, 10)
  tx = train.sgd(0.1, 0.9, 5e-4)
  state = train.create_train_state(model, jax.random.key(0), (8, 8, 1), tx,
                                   cfg.model)
  state = parallel.replicate(state, mesh)
  step = train.compile_step(functools.partial(train.train_step, hp=hp), mesh,
                            state)
  rng = parallel.replicate(jax.random.key(3), mesh)
  for i in range(steps):
    batch = jax.device_put(_batch(seed=i), parallel.batch_sharding(mesh))
    state, metrics = step(state, batch, rng)
  return jax.device_get(state), jax.device_get(metrics)


def test_zero_latent_weights_on_feature_path_equal_plain_step():
  mesh = parallel.make_mesh(1)
  cfg = tiny.tiny_config()
  cfg.model.classify_on = 'feature'
  latent_state, _ = _one_step(cfg, mesh, _hp(cfg, alpha=0.0, beta=0.0), 2)
  cfg.model.latent.enabled = False
  plain_state, _ = _one_step(cfg, mesh, _hp(cfg, alpha=0.0, beta=0.0), 2)
  for key in ('backbone', 'head'):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6,
                                                         atol=1e-7),
                 latent_state.params[key], plain_state.params[key])
  jax.tree.map(np.testing.assert_allclose, latent_state.batch_stats,
               plain_state.batch_stats)
  # And the latent losses, when switched on, do change the backbone.
  cfg.model.latent.enabled = True
  lcreg_state, metrics = _one_step(cfg, mesh, _hp(cfg), 2)
  assert {'aug_loss', 'recon_loss'} <= set(metrics)
  diff = jax.tree.map(lambda a, b: np.abs(a - b).max(),
                      lcreg_state.params['backbone'],
                      plain_state.params['backbone'])
  assert max(jax.tree.leaves(diff)) > 1e-6


@pytest.mark.parametrize('explicit,cov', [(False, 'full'), (True, 'diagonal')])
def test_four_devices_match_one(explicit, cov):
  assert len(jax.devices()) >= 4, 'conftest should give 4 CPU devices'
  cfg = tiny.tiny_config()
  cfg.model.latent.covariance = cov
  hp = _hp(cfg, explicit_latent_aug=explicit)
  s1, m1 = _one_step(cfg, parallel.make_mesh(1), hp, 2)
  s4, m4 = _one_step(cfg, parallel.make_mesh(4), hp, 2)
  close = functools.partial(np.testing.assert_allclose, rtol=2e-4, atol=2e-5)
  jax.tree.map(close, s1.params, s4.params)
  jax.tree.map(close, s1.batch_stats, s4.batch_stats)
  jax.tree.map(close, s1.cov, s4.cov)
  close(m1['loss'], m4['loss'])
  # Moments cover the global batch: 16 images × 2 steps per latent.
  np.testing.assert_array_equal(s4.cov.count, 32)


def test_stage1_schedule_warmup_and_steps():
  cfg = tiny.tiny_config().stage1
  cfg.update(lr=0.1, warmup_epochs=2, decay_epochs=(4, 6), decay_factor=0.1,
             schedule='step')
  sched = train.stage1_schedule(cfg, steps_per_epoch=10, total_steps=80)
  # MiSLAS warm-up: lr (1 + t) / warmup_steps over the first 20 steps.
  np.testing.assert_allclose(sched(0), 0.1 / 20, rtol=1e-5)
  np.testing.assert_allclose(sched(9), 0.1 * 10 / 20, rtol=1e-5)
  np.testing.assert_allclose(sched(19), 0.1, rtol=1e-5)
  np.testing.assert_allclose(sched(39), 0.1, rtol=1e-5)
  np.testing.assert_allclose(sched(40), 0.01, rtol=1e-5)
  np.testing.assert_allclose(sched(60), 0.001, rtol=1e-5)


def test_stage2_schedule_is_per_epoch_cosine():
  sched = retrain.stage2_schedule(0.1, steps_per_epoch=5, epochs=10)
  for step in (0, 4, 5, 27, 49):
    e = step // 5
    np.testing.assert_allclose(sched(step),
                               0.05 * (1 + np.cos(np.pi * e / 10)), rtol=1e-5)


def test_stage2_presets_follow_design_table():
  cfg = tiny.tiny_config().stage2
  cfg.preset = 'cifar100'
  assert retrain.stage2_settings(cfg, 100) == dict(
      las_head=0.4, las_tail=0.1, shift_bn=True, lr_factor=0.2)
  cfg.preset = 'cifar10'
  assert retrain.stage2_settings(cfg, 50)['las_head'] == 0.2
  cfg.las_head = 0.25  # an explicit value beats the preset
  assert retrain.stage2_settings(cfg, 50)['las_head'] == 0.25


@pytest.mark.parametrize('shift_bn', [False, True])
def test_stage2_step_trains_only_the_head(shift_bn):
  cfg = tiny.tiny_config()
  model = network.make_model(cfg.model, 10, lws=True)
  settings = dict(las_head=0.3, las_tail=0.0, shift_bn=shift_bn,
                  lr_factor=0.5)
  tx = retrain.stage2_optimizer(cfg.stage2, settings, 5, 2)
  state = train.create_train_state(model, jax.random.key(0), (8, 8, 1), tx,
                                   cfg.model)
  state = state.replace(cov={})
  las = dict(las_head=0.3, las_tail=0.0, shape='concave', power=None)
  new, metrics = jax.jit(functools.partial(
      retrain.retrain_step, class_counts=np.arange(10) * 10 + 5, las=las,
      shift_bn=shift_bn))(state, _batch())
  assert np.isfinite(metrics['loss'])
  for path, (a, b) in zip(
      jax.tree_util.tree_leaves_with_path(state.params),
      zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params))):
    keys = jax.tree_util.keystr(path[0])
    changed = not np.array_equal(a, b)
    assert changed == ("'head'" in keys), keys
  stats_changed = any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(state.batch_stats), jax.tree.leaves(new.batch_stats)))
  assert stats_changed == shift_bn


class _Kill(Exception):
  pass


def _final_params(workdir, kill_at=None):
  captured = {}

  def hook(stage, step, state):
    if stage == 'stage2' and step == 4:
      captured['params'] = jax.device_get(state.params)
      captured['batch_stats'] = jax.device_get(state.batch_stats)
    if (stage, step) == kill_at:
      raise _Kill()

  cfg = tiny.tiny_config()
  cfg.stage2.shift_bn = 1
  rows = run.train_and_evaluate(cfg, workdir, hooks=[hook])
  return captured, rows


def test_kill_and_resume_reaches_same_parameters(tmp_path):
  ref, ref_rows = _final_params(str(tmp_path / 'ref'))
  work = str(tmp_path / 'killed')
  # Killed between checkpoints in stage 1 (resumes from step 2, replays 3),
  # then killed in stage 2 right after a checkpoint.
  for kill in (('stage1', 3), ('stage2', 2)):
    with pytest.raises(_Kill):
      _final_params(work, kill_at=kill)
  got, rows = _final_params(work)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6,
                                                       atol=1e-7),
               got, ref)
  assert rows['stage2']['top1'] == ref_rows['stage2']['top1']


@pytest.mark.parametrize('diagonal', [False, True])
def test_explicit_latent_noise_has_covariance_lambda_sigma(diagonal):
  from lcreg_jax import covariance
  rng = np.random.default_rng(5)
  a = rng.normal(size=(2, 3, 3))
  cov = np.einsum('mde,mfe->mdf', a, a)
  state = covariance.init_covariance(2, 3, diagonal)
  stored = np.stack([np.diag(c) if diagonal else c for c in cov])
  state = state._replace(cov=jnp.asarray(stored, jnp.float32))
  noise = np.asarray(train.sample_latent_noise(jax.random.key(0), state, 0.5,
                                               100_000), np.float64)
  for m in range(2):
    emp = np.cov(noise[:, m], rowvar=False)
    ref = 0.5 * (np.diag(np.diag(cov[m])) if diagonal else cov[m])
    np.testing.assert_allclose(emp, ref, atol=0.05 * np.abs(ref).max())
