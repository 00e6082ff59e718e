"""Stage 1's initial state: random, or a torchvision backbone from a file."""

import flax
import jax
import numpy as np
import optax

from lcreg_jax import config as config_lib
from lcreg_jax.data import dataset
from lcreg_jax.models import pretrained
from lcreg_jax.stages import stage1
from tests import tiny

INFO = dataset.DatasetInfo(
  name='toy',
  num_classes=10,
  image_shape=(8, 8, 1),
  class_counts=np.ones(10, np.int64),
  split_sizes={'train': 10, 'test': 10},
)


def _state(cfg):
  config = config_lib.resolve_and_validate(cfg, num_visible_devices=1)
  return jax.device_get(stage1.initial_state(config, INFO, optax.sgd(0.1)))


def test_backbone_from_torchvision_weights(tmp_path):
  cfg = tiny.tiny_config()
  random = _state(cfg)
  cfg.seed = 1
  source = _state(cfg)  # other values to import
  # Write `source`'s backbone in torchvision's layout (OIHW kernels).
  flat = {
    (collection,) + path: value
    for collection, tree in (
      ('params', source.params),
      ('batch_stats', source.batch_stats),
    )
    for path, value in flax.traverse_util.flatten_dict(tree).items()
  }
  names = pretrained.torchvision_name_map(list(flat))
  state_dict = {
    name: (
      np.transpose(flat[path], (3, 2, 0, 1))
      if flat[path].ndim == 4
      else flat[path]
    )
    for path, name in names.items()
  }
  np.savez(tmp_path / 'w.npz', **state_dict)

  cfg.seed = 0
  cfg.model.pretrained_weights = str(tmp_path / 'w.npz')
  cfg.model.pretrained_dont_load = (
    'params/backbone/stage3_block1/.*',
    'batch_stats/backbone/stage3_block1/.*',
  )
  loaded = _state(cfg)
  for key, block in loaded.params['backbone'].items():
    expected = random if key == 'stage3_block1' else source
    jax.tree.map(
      np.testing.assert_array_equal, block, expected.params['backbone'][key]
    )
  # The head and the latent module are never imported.
  for key in ('head', 'latent'):
    jax.tree.map(
      np.testing.assert_array_equal, loaded.params[key], random.params[key]
    )
  assert not np.array_equal(
    source.params['head']['fc']['kernel'], random.params['head']['fc']['kernel']
  )
