"""Bytes of the stage-1 train state of a config, by part, without computing it.

  python benchmarks/state_size.py --config=configs/imagenet_lt.py

Shapes come from `jax.eval_shape`, so nothing is allocated: this answers "does
the state fit this accelerator?" for any config on any machine. Prints the
parameters, BatchNorm statistics, optimiser state and the latent categories'
running moments (mean, covariance, count), for the configured covariance and
for the other choice, and the peak extra memory of one full-covariance update
(the batch moments and the merged result are each M × D × D).
"""

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from lcreg_jax import config as config_lib
from lcreg_jax import optim
from lcreg_jax import train_state
from lcreg_jax.models import network

config_flags.DEFINE_config_file('config', 'configs/imagenet_lt.py',
                                'Config whose stage-1 state is measured.')
FLAGS = flags.FLAGS


def nbytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * x.dtype.itemsize
             for x in jax.tree.leaves(tree))


def state_shapes(config):
  d = config.data
  model = network.make_model(config.model, d.num_classes)
  tx = optim.stage1_optimizer(config, 0.1)
  return jax.eval_shape(lambda: train_state.create_train_state(
      model, jax.random.key(0), (d.image_size, d.image_size, d.channels), tx,
      config.model))


def main(argv):
  del argv
  base = FLAGS.config
  mib = lambda n: f'{n / 2**20:.3f} MiB'
  print(f'{base.data.name}: {base.model.backbone}, M = '
        f'{base.model.latent.num_latents}, {base.data.num_classes} classes')
  for cov in ('full', 'diagonal'):
    config = base.copy_and_resolve_references()
    config.model.latent.covariance = cov
    config = config_lib.resolve_and_validate(config, num_visible_devices=1)
    s = state_shapes(config)
    parts = dict(params=nbytes(s.params), batch_stats=nbytes(s.batch_stats),
                 opt_state=nbytes(s.opt_state), latent_moments=nbytes(s.cov))
    total = sum(parts.values())
    mark = ' (configured)' if cov == base.model.latent.covariance else ''
    print(f'covariance={cov}{mark}: ' + ', '.join(
        f'{k} {mib(v)}' for k, v in parts.items()) + f'; total {mib(total)}')
    if cov == 'full' and config.model.latent.enabled:
      print(f'  one full-covariance update also holds the batch moments and '
            f'the merged result: +{mib(2 * nbytes(s.cov.cov))} at its peak')


if __name__ == '__main__':
  app.run(main)
