"""The stage-1 step: α = β = 0 is exactly plain MiSLAS, 4 devices equal 1,
and the explicit latent noise has covariance λ Σ."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcreg_jax import config as config_lib
from lcreg_jax import covariance
from lcreg_jax import optim
from lcreg_jax import parallel
from lcreg_jax import train_state
from lcreg_jax.models import network
from lcreg_jax.steps import stage1
from tests import tiny


def batch(n=16, size=8, seed=0):
  rng = np.random.default_rng(seed)
  return dict(
    image=jnp.asarray(rng.normal(size=(n, size, size, 1)), jnp.float32),
    label=jnp.asarray(rng.integers(0, 10, n), jnp.int32),
  )


# The tiny config's stage 1: 6 steps, 36 steps per epoch (585 images of 16).
# With the same hyper-parameters and optimiser, the 4-device programs here are
# those of the stage runs, so the session's compilation cache serves them.
TOTAL, STEPS_PER_EPOCH = 6, 36


def _hp(cfg, total=TOTAL, **kw):
  resolved = config_lib.resolve_and_validate(cfg, num_visible_devices=4)
  return dataclasses.replace(
    stage1.Stage1Hparams.from_config(resolved, total), **kw
  )


def _run(cfg, mesh, hp, steps=1):
  resolved = config_lib.resolve_and_validate(cfg, num_visible_devices=4)
  model = network.make_model(resolved.model, 10)
  tx = optim.stage1_optimizer(
    resolved, optim.stage1_schedule(resolved.stage1, STEPS_PER_EPOCH, TOTAL)
  )
  state = train_state.create_train_state(
    model, jax.random.key(0), (8, 8, 1), tx, resolved.model
  )
  state = parallel.replicate(state, mesh)
  step = parallel.jit_step(
    functools.partial(stage1.train_step, hp=hp), mesh, state
  )
  for i in range(steps):
    state, metrics = step(
      state, jax.device_put(batch(seed=i), parallel.batch_sharding(mesh))
    )
  return jax.device_get(state), jax.device_get(metrics)


@pytest.mark.slow
def test_zero_latent_weights_on_feature_path_equal_plain_step():
  mesh = parallel.make_mesh(4)
  cfg = tiny.tiny_config()
  cfg.model.classify_on = 'feature'
  latent_state, _ = _run(cfg, mesh, _hp(cfg, alpha=0.0, beta=0.0), 2)
  cfg.model.latent.enabled = False
  plain_state, _ = _run(cfg, mesh, _hp(cfg), 2)
  for key in ('backbone', 'head'):
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
      latent_state.params[key],
      plain_state.params[key],
    )
  jax.tree.map(
    np.testing.assert_allclose,
    latent_state.batch_stats,
    plain_state.batch_stats,
  )
  # And the latent losses, when switched on, do change the backbone (the
  # default classification path: the same program as test_four_devices').
  cfg.model.latent.enabled = True
  cfg.model.classify_on = 'sum'
  lcreg_state, metrics = _run(cfg, mesh, _hp(cfg), 2)
  assert {'aug_loss', 'recon_loss'} <= set(metrics)
  diff = jax.tree.map(
    lambda a, b: np.abs(a - b).max(),
    lcreg_state.params['backbone'],
    plain_state.params['backbone'],
  )
  assert max(jax.tree.leaves(diff)) > 1e-6


def test_hparams_from_config_switch_latent_terms_off_without_latents():
  cfg = tiny.tiny_config()
  assert (_hp(cfg).alpha, _hp(cfg).beta) == (cfg.stage1.alpha, cfg.stage1.beta)
  cfg.model.latent.enabled = False
  assert (_hp(cfg).alpha, _hp(cfg).beta) == (0.0, 0.0)


@pytest.mark.slow
@pytest.mark.parametrize('explicit,cov', [(False, 'full'), (True, 'diagonal')])
def test_four_devices_match_one(explicit, cov):
  assert len(jax.devices()) >= 4, 'conftest should give 4 CPU devices'
  cfg = tiny.tiny_config()
  cfg.model.latent.covariance = cov
  hp = _hp(cfg, explicit_latent_aug=explicit)
  s1, m1 = _run(cfg, parallel.make_mesh(1), hp, 2)
  s4, m4 = _run(cfg, parallel.make_mesh(4), hp, 2)
  close = functools.partial(np.testing.assert_allclose, rtol=2e-4, atol=2e-5)
  jax.tree.map(close, s1.params, s4.params)
  jax.tree.map(close, s1.batch_stats, s4.batch_stats)
  jax.tree.map(close, s1.cov, s4.cov)
  close(m1['loss'], m4['loss'])
  # Moments cover the global batch: 16 images × 2 steps per latent.
  np.testing.assert_array_equal(s4.cov.count, 32)


@pytest.mark.parametrize('diagonal', [False, True])
def test_explicit_latent_noise_has_covariance_lambda_sigma(diagonal):
  rng = np.random.default_rng(5)
  a = rng.normal(size=(2, 3, 3))
  cov = np.einsum('mde,mfe->mdf', a, a)
  state = covariance.init_covariance(2, 3, diagonal)
  stored = np.stack([np.diag(c) if diagonal else c for c in cov])
  state = state._replace(cov=jnp.asarray(stored, jnp.float32))
  noise = np.asarray(
    stage1.sample_latent_noise(jax.random.key(0), state, 0.5, 100_000),
    np.float64,
  )
  for m in range(2):
    emp = np.cov(noise[:, m], rowvar=False)
    ref = 0.5 * (np.diag(np.diag(cov[m])) if diagonal else cov[m])
    np.testing.assert_allclose(emp, ref, atol=0.05 * np.abs(ref).max())


@pytest.mark.slow
def test_bfloat16_convolutions_with_float32_state():
  cfg = tiny.tiny_config()
  cfg.model.dtype = 'bfloat16'
  mesh = parallel.make_mesh(1)
  state, metrics = _run(cfg, mesh, _hp(cfg), 2)
  assert np.isfinite(metrics['loss'])
  for tree in (state.params, state.batch_stats, state.cov):
    assert {x.dtype for x in jax.tree.leaves(tree)} == {np.dtype('float32')}
  # The convolutions themselves run in bfloat16.
  resolved = config_lib.resolve_and_validate(cfg, num_visible_devices=4)
  model = network.make_model(resolved.model, 10)
  jaxpr = str(
    jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(
      jax.device_get(dict(params=state.params, batch_stats=state.batch_stats)),
      batch()['image'],
    )
  )
  assert 'conv_general_dilated' in jaxpr
  conv_lines = [l for l in jaxpr.splitlines() if 'conv_general_dilated' in l]
  assert all('bf16' in l for l in conv_lines)


@pytest.mark.slow
def test_frozen_trunk_trains_only_the_last_block():
  """model.trainable_blocks=1 on ResNet-8 (3 blocks): the stem and the first
  two blocks keep their parameters and BN statistics bit for bit (no
  gradient, no weight decay, inference-mode BN); the last block, the latent
  module and the head learn."""
  cfg = tiny.tiny_config()
  cfg.model.trainable_blocks = 1
  config = config_lib.resolve_and_validate(cfg, num_visible_devices=4)
  model = network.make_model(config.model, 10)
  tx = optim.stage1_optimizer(config, 0.1)
  state = train_state.create_train_state(
    model, jax.random.key(0), (8, 8, 1), tx, config.model
  )
  mesh = parallel.make_mesh(1)
  state = parallel.replicate(state, mesh)
  before = jax.device_get(state)
  step = parallel.jit_step(
    functools.partial(stage1.train_step, hp=_hp(cfg)), mesh, state
  )
  for i in range(2):
    state, metrics = step(
      state, jax.device_put(batch(seed=i), parallel.batch_sharding(mesh))
    )
  after = jax.device_get(state)
  assert np.isfinite(metrics['loss'])
  same = lambda a, b: all(
    np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )
  for name in ('Conv_0', 'BatchNorm_0', 'stage1_block1', 'stage2_block1'):
    assert same(before.params['backbone'][name], after.params['backbone'][name])
    if name in before.batch_stats['backbone']:
      assert same(
        before.batch_stats['backbone'][name],
        after.batch_stats['backbone'][name],
      ), name
  assert not same(
    before.params['backbone']['stage3_block1'],
    after.params['backbone']['stage3_block1'],
  )
  assert not same(
    before.batch_stats['backbone']['stage3_block1'],
    after.batch_stats['backbone']['stage3_block1'],
  )
  for key in ('latent', 'head'):
    assert not same(before.params[key], after.params[key])


def test_per_device_mixup_partners_stay_on_their_device():
  rng = jax.random.key(3)
  partners = np.asarray(stage1.mixup_partners(rng, 16, 4))
  assert partners.shape == (4, 4)
  for row in partners:  # a permutation of each device's 4 rows
    assert sorted(row.tolist()) == [0, 1, 2, 3]
  assert len({tuple(r) for r in partners.tolist()}) > 1  # drawn per device
  x = np.arange(16.0)[:, None] * np.ones((1, 3))
  mixed = np.asarray(
    stage1.take_partners(jnp.asarray(x), jnp.asarray(partners))
  )
  expected = x[(np.arange(4)[:, None] * 4 + partners).reshape(-1)]
  np.testing.assert_array_equal(mixed, expected)
  # One group: a permutation of the whole batch, the global partner.
  whole = np.asarray(stage1.mixup_partners(rng, 16, 1))
  assert whole.shape == (1, 16) and sorted(whole[0].tolist()) == list(range(16))
  np.testing.assert_array_equal(
    np.asarray(stage1.take_partners(jnp.asarray(x), jnp.asarray(whole))),
    x[whole[0]],
  )


def _gathered_bytes(cfg, hp, mesh, n=16):
  """Bytes of all-gather results in the compiled 4-device step."""
  resolved = config_lib.resolve_and_validate(cfg, num_visible_devices=4)
  model = network.make_model(resolved.model, 10)
  tx = optim.stage1_optimizer(
    resolved, optim.stage1_schedule(resolved.stage1, STEPS_PER_EPOCH, TOTAL)
  )
  state = parallel.replicate(
    train_state.create_train_state(
      model, jax.random.key(0), (8, 8, 1), tx, resolved.model
    ),
    mesh,
  )
  step = parallel.jit_step(
    functools.partial(stage1.train_step, hp=hp), mesh, state
  )
  text = (
    step.lower(state, jax.device_put(batch(n), parallel.batch_sharding(mesh)))
    .compile()
    .as_text()
  )
  total = 0
  for line in text.splitlines():
    if ' all-gather(' in line or ' all-gather-start(' in line:
      shape = line.split('=', 1)[1].split('all-gather')[0]
      dims = shape[shape.index('[') + 1 : shape.index(']')]
      total += 4 * int(np.prod([int(d) for d in dims.split(',') if d]))
  return total


@pytest.mark.slow
def test_per_device_mixup_gathers_no_images():
  """Global partners gather the whole batch of images onto every device;
  per-device partners gather nothing image-sized."""
  mesh = parallel.make_mesh(4)
  cfg = tiny.tiny_config()
  cfg.model.latent.enabled = False
  image_bytes = 16 * 8 * 8 * 1 * 4
  global_bytes = _gathered_bytes(cfg, _hp(cfg), mesh)
  cfg.stage1.mixup_partners = 'per_device'
  hp = _hp(cfg)
  assert hp.mixup_groups == 4
  per_device_bytes = _gathered_bytes(cfg, hp, mesh)
  assert global_bytes >= image_bytes > per_device_bytes
