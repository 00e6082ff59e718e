"""Stage-1 step time of the plain MiSLAS backbone vs LCReg, in one run.

  python benchmarks/step_time.py --config=configs/cifar10_lt.py

Random inputs of the config's image shape; both models are compiled and
warmed up first, then timed alternately (rounds × steps, `block_until_ready`)
so that both see the same machine conditions. Prints the median ms/step,
images/s, peak device memory where the backend reports it (GPU/TPU), and
the LCReg/plain ratio of the medians.
"""

import functools
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from lcreg_jax import config as config_lib
from lcreg_jax import optim
from lcreg_jax import parallel
from lcreg_jax import train_state
from lcreg_jax.models import network
from lcreg_jax.steps import stage1

config_flags.DEFINE_config_file('config', 'configs/cifar10_lt.py',
                                'Config whose model and stage1 are timed.')
flags.DEFINE_integer('steps', 5, 'Timed steps per model and round.')
flags.DEFINE_integer('rounds', 5, 'Alternating timing rounds.')
flags.DEFINE_integer('warmup', 3, 'Untimed steps after compilation.')
FLAGS = flags.FLAGS


def build(config, latent: bool, mesh):
  """A compiled stage-1 step, its state and one batch."""
  config = config.copy_and_resolve_references()
  config.model.latent.enabled = latent
  if not latent:
    config.model.classify_on = 'feature'
  config = config_lib.resolve_and_validate(config)
  cfg, c = config.stage1, config.data
  shape = (c.image_size, c.image_size, c.channels)
  model = network.make_model(config.model, c.num_classes)
  tx = optim.sgd(0.01, cfg.momentum, cfg.weight_decay)
  state = parallel.replicate(train_state.create_train_state(
      model, jax.random.key(0), shape, tx, config.model), mesh)
  hp = stage1.Stage1Hparams.from_config(config, total_steps=1000)
  step = parallel.jit_step(functools.partial(stage1.train_step, hp=hp), mesh,
                           state)
  bs = cfg.batch_size
  batch = jax.device_put(
      dict(image=jnp.asarray(np.random.default_rng(0).normal(
          size=(bs, *shape)), jnp.float32),
           label=jnp.arange(bs, dtype=jnp.int32) % c.num_classes),
      parallel.batch_sharding(mesh))
  return dict(step=step, state=state, batch=batch, batch_size=bs)


def run_steps(m, n: int) -> float:
  """Seconds per step over n steps (the state is carried, as in training)."""
  if n <= 0:
    return 0.0
  t0 = time.perf_counter()
  for _ in range(n):
    m['state'], metrics = m['step'](m['state'], m['batch'])
  jax.block_until_ready(metrics)
  return (time.perf_counter() - t0) / max(n, 1)


def main(argv):
  del argv
  config = FLAGS.config
  mesh = parallel.make_mesh(config_lib.resolve_and_validate(config).num_devices)
  print(f'JAX {jax.__version__} on {jax.devices()[0].device_kind} ×'
        f'{mesh.devices.size}; {config.model.backbone}, batch '
        f'{config.stage1.batch_size}, {config.data.image_size}²×'
        f'{config.data.channels}, M={config.model.latent.num_latents}, '
        f'covariance={config.model.latent.covariance}')
  models = {}
  for name, latent in (('plain', False), ('lcreg', True)):
    models[name] = build(config, latent, mesh)
    t0 = time.perf_counter()
    run_steps(models[name], 1)
    print(f'{name}: compiled and ran the first step in '
          f'{time.perf_counter() - t0:.1f} s')
    run_steps(models[name], FLAGS.warmup)
  # Alternate the two models over several rounds and take medians, so that
  # a slow phase of a shared machine hits both alike.
  times = {name: [] for name in models}
  for _ in range(FLAGS.rounds):
    for name, m in models.items():
      times[name].append(run_steps(m, FLAGS.steps))
  for name, ts in times.items():
    dt = float(np.median(ts))
    bs = models[name]['batch_size']
    stats = jax.devices()[0].memory_stats() or {}
    print(f'{name:6s} {1e3 * dt:9.2f} ms/step  {bs / dt:9.1f} images/s  '
          f'(median of {len(ts)} rounds of {FLAGS.steps} steps; spread '
          f'{1e3 * min(ts):.0f}-{1e3 * max(ts):.0f} ms)  peak device memory '
          f'{stats.get("peak_bytes_in_use", 0) / 2**30:.2f} GiB')
  ratio = np.median(times['lcreg']) / np.median(times['plain'])
  print(f'ratio lcreg/plain step time: {ratio:.3f}')
  sys.stdout.flush()


if __name__ == '__main__':
  app.run(main)
