"""The data set as the package sees it: the description matches the data,
and the batch iterators deliver it."""

import itertools

import jax
import numpy as np

from lcreg_jax import parallel
from lcreg_jax.data import dataset
from lcreg_jax.data import sources
from tests import tiny


def test_description_and_batches_of_digits():
  cfg = tiny.tiny_config().data
  cfg.val_per_class = 3
  data = dataset.load(cfg)
  info = data.info
  arrays = sources.load_dataset(cfg)  # the same source, independently
  assert info.name == 'digits-lt10' and info.num_classes == 10
  assert info.image_shape == (8, 8, 1)
  np.testing.assert_array_equal(
    info.class_counts, np.bincount(arrays.train.labels)
  )
  assert info.split_sizes == {
    'train': len(arrays.train.labels),
    'test': len(arrays.test.labels),
    'val': len(arrays.val.labels),
  }
  assert info.class_counts.sum() == info.split_sizes['train']
  assert info.has_split('val') and 'val' in info.describe()
  sharding = parallel.batch_sharding(parallel.make_mesh(4))
  labels = np.concatenate(
    [
      np.asarray(b['label'])[np.asarray(b['mask']) > 0]
      for b in data.eval_batches(
        'test', global_batch_size=64, sharding=sharding
      )
    ]
  )
  np.testing.assert_array_equal(labels, arrays.test.labels)
  first = next(
    data.train_batches(
      global_batch_size=16, sharding=sharding, seed=0, start_step=0
    )
  )
  assert first['image'].shape == (16, 8, 8, 1)
  assert isinstance(first['image'], jax.Array)
  # Normalised with the training split's statistics: about zero mean.
  images = np.concatenate(
    [
      np.asarray(b['image'])
      for b in itertools.islice(
        data.train_batches(
          global_batch_size=16, sharding=sharding, seed=0, start_step=0
        ),
        30,
      )
    ]
  )
  assert abs(images.mean()) < 0.2
