"""Streaming from image files: on lossless files it delivers exactly the
batches of the in-memory pipeline (same order, same augmentation draws,
same normalisation), resumes exactly, and bad files stop with their name or
are skipped and counted."""

import itertools

import numpy as np
import pytest

from lcreg_jax import errors
from lcreg_jax import parallel
from lcreg_jax.data import dataset
from lcreg_jax.data import sources
from lcreg_jax.data import streaming
from tests import tiny
from tests.data import image_tree

SHARDING = parallel.batch_sharding(parallel.make_mesh(4))


@pytest.fixture(scope='module')
def digits_as_files(tmp_path_factory):
  """The tiny digits-LT config in memory, and the same images as PNG files."""
  root = tmp_path_factory.mktemp('digits_png')
  memory = tiny.tiny_config().data
  arrays = sources.load_dataset(memory)
  files = memory.copy_and_resolve_references()
  files.update(
    source='list',
    image_root=str(root),
    train_list=image_tree.write_tree(
      root, arrays.train.images, arrays.train.labels, 'train.txt'
    ),
    test_list=image_tree.write_tree(
      root, arrays.test.images, arrays.test.labels, 'test.txt', subdir='test'
    ),
  )
  return memory, files


def _train(data, steps, start=0, **kw):
  it = data.train_batches(
    global_batch_size=16, sharding=SHARDING, seed=3, start_step=start, **kw
  )
  return [
    {k: np.asarray(v) for k, v in b.items()}
    for b in itertools.islice(it, steps)
  ]


@pytest.mark.parametrize('sampler', ['shuffle', 'class_balanced'])
def test_streamed_batches_equal_in_memory_batches(digits_as_files, sampler):
  memory, files = digits_as_files
  in_memory, streamed = dataset.load(memory), dataset.load(files)
  assert isinstance(streamed, dataset.FileDataset)
  np.testing.assert_array_equal(
    streamed.info.class_counts, in_memory.info.class_counts
  )
  assert streamed.info.split_sizes == in_memory.info.split_sizes
  assert streamed.info.image_shape == in_memory.info.image_shape
  # Across an epoch boundary (585 images: 36 steps of 16 per epoch).
  a = _train(in_memory, 40, sampler=sampler)
  b = _train(streamed, 40, sampler=sampler)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['label'], y['label'])
    np.testing.assert_allclose(x['image'], y['image'], rtol=0, atol=1e-6)
  # Exact resume on the streamed path.
  for x, y in zip(b[30:], _train(streamed, 10, start=30, sampler=sampler)):
    np.testing.assert_array_equal(x['image'], y['image'])
  # And the augmentation is real: an epoch later the same images differ.
  assert not np.array_equal(b[0]['image'], b[36]['image'])


def test_streamed_evaluation_equals_in_memory(digits_as_files):
  memory, files = digits_as_files
  batches = [
    list(
      dataset.load(c).eval_batches(
        'test', global_batch_size=64, sharding=SHARDING
      )
    )
    for c in (memory, files)
  ]
  assert len(batches[0]) == len(batches[1]) == 5  # 300 images, padded
  for x, y in zip(*batches):
    for key in ('label', 'mask'):
      np.testing.assert_array_equal(np.asarray(x[key]), np.asarray(y[key]))
    np.testing.assert_allclose(
      np.asarray(x['image']), np.asarray(y['image']), atol=1e-6
    )


def _with_a_damaged_file(files, tmp_path, index=5):
  """A copy of the train list whose `index`-th image is not an image."""
  lines = open(files.train_list).read().splitlines()
  bad = tmp_path / 'broken.png'
  bad.write_bytes(b'not a png at all')
  lines[index] = f'{bad} {lines[index].split()[-1]}'
  (tmp_path / 'train.txt').write_text('\n'.join(lines) + '\n')
  damaged = files.copy_and_resolve_references()
  damaged.train_list = str(tmp_path / 'train.txt')
  return damaged, str(bad)


def test_a_bad_file_stops_with_its_name(digits_as_files, tmp_path):
  _, files = digits_as_files
  damaged, bad = _with_a_damaged_file(files, tmp_path)
  with pytest.raises(errors.DataError) as e:
    dataset.load(damaged)  # the statistics pass decodes every image
  assert bad in str(e.value)


def test_a_bad_file_is_skipped_and_counted(
  digits_as_files, tmp_path, monkeypatch
):
  _, files = digits_as_files
  damaged, bad = _with_a_damaged_file(files, tmp_path)
  damaged.on_bad_image = 'skip'
  warnings = []
  monkeypatch.setattr(
    streaming.logging, 'warning', lambda msg, *args: warnings.append(msg % args)
  )
  data = dataset.load(damaged)
  assert warnings == [f'{damaged.train_list}: skipped 1 unreadable image(s).']
  warnings.clear()
  batches = _train(data, 40)
  assert all(b['image'].shape == (16, 8, 8, 1) for b in batches)
  assert warnings and 'skipped 1 unreadable image(s), 1 so far' in warnings[0]
  # The stop mode names the file during training too.
  data._config.on_bad_image = 'stop'  # pylint: disable=protected-access
  with pytest.raises(errors.DataError) as e:
    _train(data, 40)
  assert bad in str(e.value) and 'on_bad_image=skip' in str(e.value)


def test_imagenet_augmentation_resumes_exactly_on_any_thread_count(tmp_path):
  """data.augment='imagenet' (parameters drawn per batch in NumPy, image work per
  example): a run from start_step=k delivers the tail of an uninterrupted run, bit
  for bit, across an epoch boundary, with tf.data's default threads or one."""
  photos = image_tree.random_photos(
    10, seed=2, sizes=((60, 80), (80, 60), (33, 47))
  )
  labels = np.arange(10) % 2
  list_path = image_tree.write_tree(
    str(tmp_path), photos, labels, 'train.txt', fmt='jpg'
  )
  cfg = tiny.tiny_config().data
  cfg.update(
    source='list',
    augment='imagenet',
    image_size=32,
    channels=3,
    imbalance_factor=1.0,
    num_classes=2,
    image_root=str(tmp_path),
    train_list=list_path,
    test_list=list_path,
    val_list='',
    val_per_class=0,
  )
  data = dataset.load(cfg)
  assert isinstance(data, dataset.FileDataset)

  def run(steps, start=0, threads=None):
    split = data._splits['train']  # pylint: disable=protected-access
    it = streaming.make_train_iterator(
      split.reader,
      split.labels,
      global_batch_size=4,
      sharding=SHARDING,
      seed=9,
      start_step=start,
      example_fn=data._train_fn(4),  # pylint: disable=protected-access
      threads=threads,
    )
    return [
      {k: np.asarray(v) for k, v in b.items()}
      for b in itertools.islice(it, steps)
    ]

  full = run(6)  # 10 images: 2 steps of 4 per epoch
  assert all(b['image'].shape == (4, 32, 32, 3) for b in full)
  for x, y in zip(full[3:], run(3, start=3)):
    np.testing.assert_array_equal(x['label'], y['label'])
    np.testing.assert_array_equal(x['image'], y['image'])
  for x, y in zip(full, run(6, threads=1)):
    np.testing.assert_array_equal(x['image'], y['image'])
  # FileDataset.train_batches is the same stream.
  via_dataset = _train_imagenet(data, 2, start=4)
  for x, y in zip(full[4:], via_dataset):
    np.testing.assert_array_equal(x['image'], y['image'])
  # And another seed gives other views.
  split = data._splits['train']  # pylint: disable=protected-access
  other = next(
    streaming.make_train_iterator(
      split.reader,
      split.labels,
      global_batch_size=4,
      sharding=SHARDING,
      seed=10,
      example_fn=data._train_fn(4),
    )
  )  # pylint: disable=protected-access
  assert not np.array_equal(np.asarray(other['image']), full[0]['image'])


def test_imagenet_augmentation_names_a_bad_file(tmp_path):
  photos = image_tree.random_photos(6, seed=3, sizes=((60, 80),))
  list_path = image_tree.write_tree(
    str(tmp_path), photos, np.arange(6) % 2, 'train.txt', fmt='jpg'
  )
  lines = open(list_path).read().splitlines()
  bad = tmp_path / 'broken.jpg'
  bad.write_bytes(b'\xff\xd8\xff not really a jpeg')
  lines[2] = f'{bad} 0'
  open(list_path, 'w').write('\n'.join(lines) + '\n')
  cfg = tiny.tiny_config().data
  cfg.update(
    source='list',
    augment='imagenet',
    image_size=32,
    channels=3,
    imbalance_factor=1.0,
    num_classes=2,
    image_root=str(tmp_path),
    train_list=list_path,
    test_list=list_path,
    val_list='',
    val_per_class=0,
    check_files=False,
  )
  with pytest.raises(errors.DataError) as e:
    _train_imagenet(dataset.load(cfg), 3, start=0)
  assert str(bad) in str(e.value)
  cfg.on_bad_image = 'skip'
  batches = _train_imagenet(dataset.load(cfg), 3, start=0)
  assert all(b['image'].shape == (4, 32, 32, 3) for b in batches)


def _train_imagenet(data, steps, start):
  it = data.train_batches(
    global_batch_size=4, sharding=SHARDING, seed=9, start_step=start
  )
  return [
    {k: np.asarray(v) for k, v in b.items()}
    for b in itertools.islice(it, steps)
  ]
