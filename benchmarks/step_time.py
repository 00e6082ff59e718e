"""Stage-1 step time of the plain MiSLAS backbone vs LCReg, in one run.

  python benchmarks/step_time.py --config=configs/cifar10_lt.py --steps=20

Random inputs of the config's image shape; both models are compiled and
warmed up first, then timed over the same number of steps with
`block_until_ready`. Prints ms/step, images/s, peak device memory where the
backend reports it, and the LCReg/plain ratio.
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

from lcreg_jax import parallel
from lcreg_jax import train
from lcreg_jax.models import network

config_flags.DEFINE_config_file('config', 'configs/cifar10_lt.py',
                                'Config whose model and stage1 are timed.')
flags.DEFINE_integer('steps', 20, 'Timed steps per model.')
flags.DEFINE_integer('warmup', 3, 'Untimed steps after compilation.')
FLAGS = flags.FLAGS


def time_model(config, latent: bool, mesh, steps: int, warmup: int):
  config = config.copy_and_resolve_references()
  config.model.latent.enabled = latent
  if not latent:
    config.model.classify_on = 'feature'
  cfg, c = config.stage1, config.data
  shape = (c.image_size, c.image_size, c.channels)
  model = network.make_model(config.model, c.num_classes)
  tx = train.sgd(0.01, cfg.momentum, cfg.weight_decay)
  rng = jax.random.key(0)
  state = parallel.replicate(
      train.create_train_state(model, rng, shape, tx, config.model), mesh)
  hp = train.Stage1Hparams(
      alpha=cfg.alpha if latent else 0.0, beta=cfg.beta if latent else 0.0,
      gamma=cfg.gamma, mixup_alpha=cfg.mixup_alpha,
      isda_lambda0=cfg.isda_lambda0, total_steps=1000,
      recon_normalize=config.model.latent.recon_normalize,
      recon_temperature=config.model.latent.recon_temperature,
      explicit_latent_aug=config.model.latent.explicit_latent_aug)
  step = train.compile_step(functools.partial(train.train_step, hp=hp), mesh,
                            state)
  bs = cfg.batch_size
  batch = jax.device_put(
      dict(image=jnp.asarray(np.random.default_rng(0).normal(
          size=(bs, *shape)), jnp.float32),
           label=jnp.arange(bs, dtype=jnp.int32) % c.num_classes),
      parallel.batch_sharding(mesh))
  rng = parallel.replicate(rng, mesh)
  t0 = time.perf_counter()
  state, m = step(state, batch, rng)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    state, m = step(state, batch, rng)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = step(state, batch, rng)
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t0) / steps
  stats = jax.devices()[0].memory_stats() or {}
  return dict(ms=1e3 * dt, ips=bs / dt, compile_s=compile_s,
              peak_gib=stats.get('peak_bytes_in_use', 0) / 2**30)


def main(argv):
  del argv
  config = FLAGS.config
  mesh = parallel.make_mesh(config.num_devices)
  print(f'JAX {jax.__version__} on {jax.devices()[0].device_kind} ×'
        f'{mesh.devices.size}; {config.model.backbone}, batch '
        f'{config.stage1.batch_size}, {config.data.image_size}²×'
        f'{config.data.channels}, M={config.model.latent.num_latents}, '
        f'covariance={config.model.latent.covariance}')
  rows = {}
  for name, latent in (('plain', False), ('lcreg', True)):
    rows[name] = time_model(config, latent, mesh, FLAGS.steps, FLAGS.warmup)
    r = rows[name]
    print(f'{name:6s} {r["ms"]:9.2f} ms/step  {r["ips"]:9.1f} images/s  '
          f'compile {r["compile_s"]:.1f} s  peak {r["peak_gib"]:.2f} GiB')
  print(f'ratio lcreg/plain step time: '
        f'{rows["lcreg"]["ms"] / rows["plain"]["ms"]:.3f}')
  sys.stdout.flush()


if __name__ == '__main__':
  app.run(main)
