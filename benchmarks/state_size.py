"""Bytes of the stage-1 train state of a config, by part, without computing it.

  python benchmarks/state_size.py --config=configs/imagenet_lt.py
  python benchmarks/state_size.py --config=configs/imagenet_lt.py --devices=1,4,8

Shapes come from `jax.eval_shape`, so nothing is allocated: this answers "does
the state fit this accelerator?" for any config on any machine. Prints the
parameters, BatchNorm statistics, optimiser state and the latent categories'
running moments (mean, covariance, count), for the configured covariance and
for the other choice, and the peak extra memory of one full-covariance update
(the batch moments and the merged result are each M × D × D).

With `--devices`, also the bytes each device holds on a ('data',) mesh of
that many devices, with the latent moments replicated and split along M
(`shard_covariance=True`), from the shard shapes of
`parallel.state_sharding`, the layout the stages use; '-' where M does not
divide over the devices (the run then replicates them).
"""

from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from lcreg_jax import cli
from lcreg_jax import config as config_lib
from lcreg_jax import errors
from lcreg_jax import optim
from lcreg_jax import parallel
from lcreg_jax import train_state
from lcreg_jax.models import network

config_flags.DEFINE_config_file(
  'config', 'configs/imagenet_lt.py', 'Config whose stage-1 state is measured.'
)
flags.DEFINE_list('devices', [], 'Mesh sizes for bytes per device, e.g. 1,4,8.')
FLAGS = flags.FLAGS


def nbytes(tree) -> int:
  return sum(
    int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree)
  )


def bytes_per_device(shapes, num_devices: int, shard_covariance: bool):
  """Bytes of `shapes` on one device of a ('data',) mesh of `num_devices`
  (the largest shard of each array); None if the layout is impossible."""
  mesh = jax.sharding.AbstractMesh((num_devices,), ('data',))
  try:
    shardings = parallel.state_sharding(shapes, mesh, shard_covariance)
  except ValueError:
    return None
  return sum(
    int(np.prod(s.shard_shape(x.shape))) * x.dtype.itemsize
    for x, s in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings))
  )


def state_shapes(config):
  d = config.data
  model = network.make_model(config.model, d.num_classes)
  tx = optim.stage1_optimizer(config, 0.1)
  return jax.eval_shape(
    lambda: train_state.create_train_state(
      model,
      jax.random.key(0),
      (d.image_size, d.image_size, d.channels),
      tx,
      config.model,
    )
  )


def main(argv):
  del argv
  base = FLAGS.config
  mib = lambda n: f'{n / 2**20:.3f} MiB'
  print(
    f'{base.data.name}: {base.model.backbone}, M = '
    f'{base.model.latent.num_latents}, {base.data.num_classes} classes'
  )
  per_device = []
  for cov in ('full', 'diagonal'):
    config = base.copy_and_resolve_references()
    config.model.latent.covariance = cov
    config = config_lib.resolve_and_validate(config, num_visible_devices=1)
    s = state_shapes(config)
    parts = dict(
      params=nbytes(s.params),
      batch_stats=nbytes(s.batch_stats),
      opt_state=nbytes(s.opt_state),
      latent_moments=nbytes(s.cov),
    )
    total = sum(parts.values())
    mark = ' (configured)' if cov == base.model.latent.covariance else ''
    print(
      f'covariance={cov}{mark}: '
      + ', '.join(f'{k} {mib(v)}' for k, v in parts.items())
      + f'; total {mib(total)}'
    )
    if cov == 'full' and config.model.latent.enabled:
      print(
        f'  one full-covariance update also holds the batch moments and '
        f'the merged result: +{mib(2 * nbytes(s.cov.cov))} at its peak'
      )
    per_device.append((cov, s))
  if not FLAGS.devices:
    return
  print('\nper device (MiB; moments split along M: shard_covariance=True):')
  print('| devices | covariance | replicated | split along M | unset (auto) |')
  print('|---|---|---|---|---|')
  for n in (int(x) for x in FLAGS.devices):
    for cov, s in per_device:
      rep = bytes_per_device(s, n, False)
      split = bytes_per_device(s, n, True)
      config = base.copy_and_resolve_references()
      config.model.latent.covariance = cov
      config.num_devices = n
      try:
        auto = (
          'split'
          if config_lib.resolve_and_validate(
            config, num_visible_devices=n
          ).shard_covariance
          else 'replicated'
        )
      except errors.ConfigError:
        auto = f'(the config does not run on {n} devices)'
      cell = '-' if split is None else f'{split / 2**20:.3f}'
      print(f'| {n} | {cov} | {rep / 2**20:.3f} | {cell} | {auto} |')


if __name__ == '__main__':
  cli.run(main)
