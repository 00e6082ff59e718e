"""Prepared TFDS builds streamed by index (`data.source='tfds_stream'`), on
small builds the tests write: the same batches as the in-memory pipeline
(same order, draws and normalisation), exact resume, list files picking
records by file name, and a clear message for each way a build can be
wrong."""

import itertools

import numpy as np
import pytest

from lcreg_jax import errors
from lcreg_jax import parallel
from lcreg_jax.data import dataset
from lcreg_jax.data import listfile
from lcreg_jax.data import pipeline
from lcreg_jax.data import sources
from lcreg_jax.data import tfds_builds
from tests import tiny
from tests.data import tfds_build

SHARDING = parallel.batch_sharding(parallel.make_mesh(4))


def _names(prefix, labels):
  return [
    f'{prefix}/{int(label)}/{i:05d}.png' for i, label in enumerate(labels)
  ]


@pytest.fixture(scope='module')
def digits_as_build(tmp_path_factory):
  """The tiny digits-LT config in memory, and the same images as a TFDS build
  (PNG, records in the same order)."""
  data_dir = tmp_path_factory.mktemp('tfds')
  memory = tiny.tiny_config().data
  arrays = sources.load_dataset(memory)
  tfds_build.write_build(
    data_dir,
    'lcreg_digits_lt',
    {
      'train': (
        arrays.train.images,
        arrays.train.labels,
        _names('train', arrays.train.labels),
      ),
      'test': (
        arrays.test.images,
        arrays.test.labels,
        _names('test', arrays.test.labels),
      ),
    },
    num_classes=10,
  )
  streamed = memory.copy_and_resolve_references()
  streamed.update(
    source='tfds_stream',
    tfds_name='lcreg_digits_lt',
    tfds_data_dir=str(data_dir),
  )
  return memory, streamed, arrays


def _train(data, steps, start=0, **kw):
  it = data.train_batches(
    global_batch_size=16, sharding=SHARDING, seed=3, start_step=start, **kw
  )
  return [
    {k: np.asarray(v) for k, v in b.items()}
    for b in itertools.islice(it, steps)
  ]


@pytest.mark.parametrize('sampler', ['shuffle', 'class_balanced'])
def test_streamed_build_equals_in_memory(digits_as_build, sampler):
  memory, streamed_cfg, _ = digits_as_build
  in_memory, streamed = dataset.load(memory), dataset.load(streamed_cfg)
  assert isinstance(streamed, dataset.FileDataset)
  np.testing.assert_array_equal(
    streamed.info.class_counts, in_memory.info.class_counts
  )
  assert streamed.info.split_sizes == in_memory.info.split_sizes
  # Across an epoch boundary (585 images: 36 steps of 16 per epoch).
  a, b = (
    _train(in_memory, 40, sampler=sampler),
    _train(streamed, 40, sampler=sampler),
  )
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['label'], y['label'])
    np.testing.assert_allclose(x['image'], y['image'], rtol=0, atol=1e-6)
  for x, y in zip(b[33:], _train(streamed, 7, start=33, sampler=sampler)):
    np.testing.assert_array_equal(x['image'], y['image'])
  evals = [
    list(d.eval_batches('test', global_batch_size=64, sharding=SHARDING))
    for d in (in_memory, streamed)
  ]
  assert len(evals[0]) == len(evals[1]) == 5
  for x, y in zip(*evals):
    for key in ('label', 'mask', 'image'):
      np.testing.assert_allclose(
        np.asarray(x[key]), np.asarray(y[key]), atol=1e-6
      )


def test_val_split_carved_from_the_build(digits_as_build):
  memory, streamed_cfg, _ = digits_as_build
  memory, streamed_cfg = (
    memory.copy_and_resolve_references(),
    streamed_cfg.copy_and_resolve_references(),
  )
  memory.val_per_class = streamed_cfg.val_per_class = 3
  in_memory, streamed = dataset.load(memory), dataset.load(streamed_cfg)
  assert streamed.info.split_sizes == in_memory.info.split_sizes
  x, y = [
    next(iter(d.eval_batches('val', global_batch_size=16, sharding=SHARDING)))
    for d in (in_memory, streamed)
  ]
  np.testing.assert_array_equal(np.asarray(x['label']), np.asarray(y['label']))
  np.testing.assert_allclose(
    np.asarray(x['image']), np.asarray(y['image']), atol=1e-6
  )


@pytest.fixture(scope='module')
def places_like(tmp_path_factory):
  """A shuffled build whose file names start at another root than the list's
  (as places365_small's `data_256/a/abbey/...` vs Places-LT's lists)."""
  tmp = tmp_path_factory.mktemp('places_like')
  rng = np.random.default_rng(0)
  labels = np.arange(30) % 3
  images = rng.integers(0, 256, (30, 6, 5, 3), dtype=np.uint8)
  names = [
    f'data_256/{"abc"[y]}/cls{y}/{i:08d}.png' for i, y in enumerate(labels)
  ]
  tfds_build.write_build(
    tmp,
    'lcreg_places_like',
    {'train': (images, labels, names)},
    num_classes=3,
    shuffle=True,
  )
  builder = tfds_builds.open_builder('lcreg_places_like', str(tmp))
  return tmp, builder, images, labels, names


def _list(tmp, lines, name='list.txt'):
  path = tmp / name
  path.write_text(''.join(f'{p} {y}\n' for p, y in lines))
  return listfile.read_list(str(path), '', 3, check_files=False)


def test_a_list_picks_the_records_by_file_name(places_like):
  tmp, builder, images, labels, names = places_like
  chosen = [17, 2, 29, 5, 11]  # a subset, in the list's own order
  lines = [(names[i].split('/', 1)[1], labels[i]) for i in chosen]
  split = tfds_builds.load_split(builder, 'train', 3, _list(tmp, lines))
  np.testing.assert_array_equal(split.labels, labels[chosen])
  tf = pipeline.import_tf()
  for row, i in enumerate(chosen):
    encoded = split.reader.read(tf, tf.constant(row, tf.int64))
    np.testing.assert_array_equal(tf.io.decode_png(encoded).numpy(), images[i])
  # Without a list: the whole split, its labels in record order (shuffled at build).
  whole = tfds_builds.load_split(builder, 'train', 3)
  assert sorted(whole.labels.tolist()) == sorted(labels.tolist())
  assert whole.labels.tolist() != labels.tolist()


def test_list_problems_are_named(places_like):
  tmp, builder, _, labels, names = places_like
  with pytest.raises(
    errors.DataError, match=r'1 not found \(e.g. b/cls1/99999999.png\)'
  ):
    tfds_builds.load_split(
      builder,
      'train',
      3,
      _list(tmp, [(names[0], labels[0]), ('b/cls1/99999999.png', 1)]),
    )
  wrong = (int(labels[4]) + 1) % 3
  with pytest.raises(
    errors.DataError, match='differ from TFDS lcreg_places_like:train'
  ):
    tfds_builds.load_split(builder, 'train', 3, _list(tmp, [(names[4], wrong)]))
  with pytest.raises(
    errors.DataError, match='has splits train; set data.tfds_train_split'
  ):
    tfds_builds.load_split(builder, 'validation', 3)
  with pytest.raises(errors.DataError, match=r'labels outside \[0, 2\)'):
    tfds_builds.load_split(builder, 'train', 2)


def test_missing_and_unreadable_builds_say_how_to_fix_them(tmp_path):
  with pytest.raises(errors.DataError) as e:
    tfds_builds.open_builder('lcreg_not_there', str(tmp_path))
  assert str(tmp_path) in str(e.value) and 'tfds build lcreg_not_there' in str(
    e.value
  )
  images = np.zeros((4, 5, 5, 3), np.uint8)
  folder = tfds_build.write_build(
    tmp_path,
    'lcreg_as_tfrecord',
    {'train': (images, np.arange(4) % 2, [f'{i}.png' for i in range(4)])},
    num_classes=2,
    file_format='tfrecord',
  )
  with pytest.raises(errors.DataError) as e:
    tfds_builds.open_builder('lcreg_as_tfrecord', str(tmp_path))
  assert (
    f'tfds convert_format --dataset_version_dir={folder} '
    '--out_file_format=array_record'
  ) in str(e.value)
