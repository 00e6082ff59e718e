"""lcreg_jax.aot: the run's programs compiled for TPU topologies on the CPU.

The tiny config compiles for a 4-chip v5e and a 4-host v5e slice through
libtpu's compile-only devices (the `test` extra installs it on Linux, where
these tests must run; elsewhere libtpu has no wheel and they skip).
"""

import importlib.util
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from lcreg_jax import aot
from lcreg_jax import config as config_lib
from lcreg_jax import parallel
from tests import cli
from tests.tiny import tiny_config


@pytest.fixture(scope='module', autouse=True)
def libtpu():
  if importlib.util.find_spec('libtpu') is None:
    message = "libtpu is not installed: pip install -e '.[test]'"
    if sys.platform == 'linux':
      pytest.fail(message)
    pytest.skip(message + ' (it has wheels for Linux only)')


def resolved(target, **overrides):
  c = tiny_config()
  for key, value in overrides.items():
    c[key].update(value)
  return config_lib.resolve_and_validate(c, len(target.devices))


@pytest.fixture(scope='module')
def v5e_2x2():
  return aot.get_target('tpu:v5e:2x2')


@pytest.fixture(scope='module')
def tiny_rows(v5e_2x2):
  config = resolved(v5e_2x2, dlsa=dict(flow_steps=2, classifier_steps=2))
  return {
    r['program']: r for r in aot.run(config, v5e_2x2, aot.PROGRAMS)
  }, config


def batch_bytes(config, stage):
  """Global bytes of the inputs a step reads: float32 images and int32
  labels; evaluation reads the float32 mask instead of the labels."""
  b, (h, w, c) = config[stage].batch_size, aot.data_info(config).image_shape
  return b * h * w * c * 4 + b * 4


@pytest.mark.slow
def test_tiny_config_compiles_every_program_for_v5e_2x2(tiny_rows):
  rows, _ = tiny_rows
  assert list(rows) == [
    'stage1',
    'stage2',
    'eval',
    'dlsa_flow',
    'dlsa_classifier',
    'dlsa_classifier_final',
  ]
  for row in rows.values():
    assert row['device_kind'] == 'TPU v5 lite' and row['devices'] == 4
    assert row['argument_bytes'] > 0 and row['output_bytes'] > 0
    assert row['hbm_bytes'] > 0 and row['fits']
    assert row['capacity_bytes'] == 16 * 1024**3
    assert row['headroom_bytes'] == 16 * 1024**3 - row['hbm_bytes']
    assert row['flops_per_image'] > 0 and row['images_per_s_per_chip'] > 0


@pytest.mark.slow
def test_batch_is_split_over_the_devices(tiny_rows):
  rows, config = tiny_rows
  for stage in ('stage1', 'stage2', 'eval'):
    row = rows[stage]
    assert row['images_per_device'] == config[stage].batch_size / 4
    # From the compiled program's own input sharding: a quarter each.
    assert row['batch_bytes_per_device'] * 4 == batch_bytes(config, stage)
  # DLSA runs on one device, unsharded.
  assert rows['dlsa_flow']['program_devices'] == 1


@pytest.mark.slow
def test_stage1_step_keeps_the_training_layout(tiny_rows):
  # M = 4 divides the 4 devices: a full covariance is split along M, as
  # `stages.stage1` places it; the parameters are replicated.
  rows, config = tiny_rows
  assert config.shard_covariance
  split = rows['stage1']['split_arguments']
  assert "0.cov.cov ('data',)" in split and "1.image ('data',)" in split
  assert not [s for s in split if s.startswith('0.params')]
  assert "2.image ('data',)" in rows['eval']['split_arguments']


@pytest.mark.slow
def test_multi_host_slice_splits_the_batch_and_explains_m(tiny_rows):
  target = aot.get_target('tpu:v5e:4x4')
  assert len(target.devices) == 16 and target.hosts == 4
  config = resolved(target)
  assert not config.shard_covariance  # M = 4 does not split over 16
  (row,) = aot.run(config, target, ('stage1',))
  assert row['hosts'] == 4 and row['images_per_device'] == 1
  assert row['batch_bytes_per_device'] * 16 == batch_bytes(config, 'stage1')
  assert row['hbm_bytes'] > 0 and row['temp_bytes'] > 0
  # The nearest M that splits over 16 devices is 16 (0 is no M).
  assert 'num_latents=16' in ' '.join(row['notes'])


class Dense3(nn.Module):
  @nn.compact
  def __call__(self, x):
    for width in (512, 384, 256):
      x = nn.Dense(width, use_bias=False)(x)
    return x


def test_flops_of_a_dense_model_are_the_hand_count(v5e_2x2):
  b, d_in = 256, 128
  model = Dense3()
  mesh = parallel.make_mesh(None, v5e_2x2.devices)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, d_in)))

  def grads(params, batch):
    # Gradients for the weights and the inputs: every matmul has its
    # forward, its weight gradient and its input gradient.
    loss = lambda p, x: 0.5 * jnp.sum(model.apply(p, x) ** 2)
    return jax.grad(loss, argnums=(0, 1))(params, batch['image'])

  rep = parallel.replicated(mesh)
  fn = jax.jit(grads, in_shardings=(rep, parallel.batch_sharding(mesh)))
  args = (
    aot.with_sharding(params, jax.tree.map(lambda _: rep, params)),
    {
      'image': jax.ShapeDtypeStruct(
        (b, d_in), jnp.float32, sharding=parallel.batch_sharding(mesh)
      )
    },
  )
  row = aot.compile_program(aot.Program('dense', fn, args, b, 4), v5e_2x2)
  widths = (d_in, 512, 384, 256)
  # Per device (b / 4 rows): forward 2·rows·in·out per matmul, backward
  # twice that; and one add per weight to sum the 4 devices' gradients.
  rows = b // 4
  matmuls = sum(3 * 2 * rows * i * o for i, o in zip(widths, widths[1:]))
  all_reduce = sum(i * o for i, o in zip(widths, widths[1:]))
  assert row['cost_source'] == 'compiled'
  assert row['flops_per_image'] == pytest.approx(
    (matmuls + all_reduce) / rows, rel=1e-6
  )


@pytest.mark.slow
def test_config_that_does_not_fit_exits_with_advice():
  res = subprocess.run(
    [
      sys.executable,
      '-m',
      'lcreg_jax.aot',
      '--config=tests/tiny.py',
      '--target=tpu:v5e:2x2',
      '--programs=stage1',
      '--config.data.image_size=224',
      '--config.data.channels=3',
      '--config.stage1.batch_size=16384',
    ],
    cwd=cli.ROOT,
    env=os.environ,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert res.returncode == 1, res.stderr[-2000:]
  assert 'DOES NOT FIT' in res.stdout
  err = res.stderr
  assert 'error: stage1 needs' in err and 'does not fit' in err
  assert 'Traceback' not in err
  assert 'largest buffers: f32[' in err
  for tip in (
    '--config.model.dtype=bfloat16',
    '--config.model.latent.covariance=diagonal',
    '--config.stage1.batch_size=8192',
  ):
    assert tip in err


def test_v4_compiles_per_core_and_halves_the_chip_memory():
  # libtpu's v4 topologies have a device per TensorCore, two per chip
  # sharing its 32 GiB: a v4-8 (2x2x1) is 8 devices of 16 GiB.
  target = aot.get_target('tpu:v4:2x2x1')
  assert len(target.devices) == 8 and target.devices_per_chip == 2
  assert aot.device_capacity(target) == 16 * 1024**3


def test_m_not_dividing_the_devices_names_the_nearest_m():
  text = aot.nearest_m_text(100, 16)
  assert 'num_latents=96' in text and '96 or 112' in text


def test_unknown_targets_are_explained():
  with pytest.raises(aot.CompileError, match='tpu:<topology>'):
    aot.get_target('v5e:2x2')
  with pytest.raises(aot.CompileError, match='v5e:4x4'):
    aot.get_target('tpu:v99:1x1')
  with pytest.raises(aot.CompileError, match='gpu:h100'):
    aot.get_target('gpu:a100:8')
