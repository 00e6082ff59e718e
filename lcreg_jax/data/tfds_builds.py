"""Prepared TFDS builds streamed by random access (`data.source='tfds_stream'`).

ImageNet-LT (`imagenet_lt`), iNaturalist 2018 (`i_naturalist2018`) and
Places-LT (`places365_small` restricted to the Places-LT list files' images)
as TFDS prepares them. Nothing is downloaded. The records are read one at a
time by index (`as_data_source`, ArrayRecord files) with the image left
encoded (`tfds.decode.SkipDecoding`) and decoded in the tf.data pipeline, so
the streamed path keeps the list-file path's sample order, its (seed,
position)-keyed augmentation and its exact resume, and each process reads
only the examples of its rows of the global batch.

Only the labels (and, to match a list file, the file names) are read up
front, in one pass over the split's records.
"""

import os
import time

from absl import logging
import numpy as np

from lcreg_jax.data import pipeline
from lcreg_jax.data import readers
from lcreg_jax.errors import DataError

# Features that hold an example's original file name, in the builds above.
NAME_FEATURES = ('file_name', 'filename', 'id')


def _tfds():
  pipeline.import_tf()  # hides accelerators from TensorFlow before TFDS loads it
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return tfds


def _prepare_hint(name: str, data_dir: str) -> str:
  return (
    f'Prepare it where the raw files are (nothing is downloaded here): `tfds build '
    f'{name} --data_dir={data_dir} --manual_dir=RAW --file_format=array_record`, '
    'or copy a prepared build into that folder; point --config.data.tfds_data_dir at '
    'the folder that holds the build.'
  )


def open_builder(name: str, data_dir: str):
  """The prepared build, in a random-access file format, or a DataError."""
  tfds = _tfds()
  data_dir = data_dir or str(tfds.core.constants.DATA_DIR)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except  (TFDS raises many kinds)
    reason = (
      str(e).strip().splitlines()[0].rstrip('.') if str(e).strip() else ''
    )
    raise DataError(
      f'no TFDS build {name!r} found in {data_dir} ({type(e).__name__}: '
      f'{reason}). {_prepare_hint(name, data_dir)}'
    ) from e
  if not builder.is_prepared():
    raise DataError(
      f'TFDS {name!r} is not prepared in {data_dir} (no '
      f'{builder.data_dir}). {_prepare_hint(name, data_dir)}'
    )
  fmt = builder.info.file_format
  if fmt not in tfds.core.file_adapters.FileFormat.with_random_access():
    raise DataError(
      f'the TFDS build {builder.data_dir} is stored as {fmt.value}, which cannot be read '
      'by index, and streaming needs that for its sample order and exact resume. '
      'Convert it once (a copy next to it): `tfds convert_format --dataset_version_dir='
      f'{builder.data_dir} --out_file_format=array_record`.'
    )
  features = builder.info.features
  if 'image' not in features or 'label' not in features:
    raise DataError(
      f'TFDS {name!r} has no "image" and "label" features (it has '
      f'{", ".join(features)}); choose an image classification build.'
    )
  return builder


class TfdsReader:
  """Encoded images of records `indices` of one split of a prepared build."""

  def __init__(self, builder, split: str, indices: np.ndarray, source=None):
    tfds = _tfds()
    self._builder, self._split = builder, split
    self.indices = np.asarray(indices, np.int64)
    self._source = (
      source
      if source is not None
      else builder.as_data_source(
        split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
      )
    )
    self._decoders = {'image': tfds.decode.SkipDecoding()}

  def __len__(self) -> int:
    return len(self.indices)

  def raw(self, index: int) -> bytes:
    return self._source[int(self.indices[index])]

  def read(self, tf, index):
    raw = tf.numpy_function(
      lambda i: self.raw(int(i)), [index], tf.string, stateful=False
    )
    example = self._builder.info.features.deserialize_example(
      tf.ensure_shape(raw, []), decoders=self._decoders
    )
    return example['image']

  def name(self, index: int) -> str:
    return (
      f'record {int(self.indices[index])} of TFDS {self._builder.name}:{self._split} '
      f'in {self._builder.data_dir}'
    )

  def subset(self, indices: np.ndarray) -> 'TfdsReader':
    return TfdsReader(
      self._builder, self._split, self.indices[indices], self._source
    )


def _labels_and_names(builder, split: str, source, want_names: bool):
  """Every record's label (and file name): one parallel pass over the split."""
  tf = pipeline.import_tf()
  tfds = _tfds()
  features = builder.info.features
  name_key = next((k for k in NAME_FEATURES if k in features), None)
  if want_names and name_key is None:
    raise DataError(
      f'TFDS {builder.name!r} has no file-name feature ({" / ".join(NAME_FEATURES)})'
      ' to match list files against; leave data.train_list / val_list / '
      'test_list empty for this build.'
    )
  decoders = {
    k: tfds.decode.SkipDecoding()
    for k in features
    if k not in ('label', name_key)
  }

  def parse(i):
    raw = tf.numpy_function(
      lambda j: source[int(j)], [i], tf.string, stateful=False
    )
    ex = features.deserialize_example(
      tf.ensure_shape(raw, []), decoders=decoders
    )
    return ex['label'], (ex[name_key] if want_names else tf.constant(b''))

  start = time.time()
  ds = (
    tf.data.Dataset.range(len(source))
    .map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    .batch(4096)
  )
  labels, names = [], []
  for label, name in ds.as_numpy_iterator():
    labels.append(label)
    names.append(name)
  logging.info(
    'TFDS %s:%s: read %d labels in %.1f s.',
    builder.name,
    split,
    len(source),
    time.time() - start,
  )
  labels = np.concatenate(labels).astype(np.int64)
  names = np.concatenate(names).astype(str) if want_names else None
  return labels, names


def _match_list(names: np.ndarray, list_split, where: str) -> np.ndarray:
  """Record index of each list line, matching the line's path to a record's
  file name by their longest common tail of path components (the builds and
  the lists root their paths differently, e.g. `data_256/a/abbey/1.jpg` and
  `a/abbey/1.jpg`)."""
  by_tail = {}
  for record, name in enumerate(names):
    parts = name.replace('\\', '/').strip('/').split('/')
    by_tail.setdefault('/'.join(parts[-2:]), []).append((record, parts))
  indices, missing, ambiguous = [], [], []
  for path in list_split.paths:
    parts = str(path).replace('\\', '/').strip('/').split('/')
    candidates = by_tail.get('/'.join(parts[-2:]), []) or by_tail.get(
      parts[-1], []
    )

    def common(other, parts=parts):
      k = 0
      while k < min(len(other), len(parts)) and other[-1 - k] == parts[-1 - k]:
        k += 1
      return k

    scored = sorted(((common(p), r) for r, p in candidates), reverse=True)
    if not scored:
      missing.append(str(path))
    elif len(scored) > 1 and scored[0][0] == scored[1][0]:
      ambiguous.append(str(path))
    else:
      indices.append(scored[0][1])
  if missing or ambiguous:
    problems = (
      [f'{len(missing)} not found (e.g. {", ".join(missing[:3])})']
      if missing
      else []
    ) + (
      [
        f'{len(ambiguous)} match several records (e.g. '
        f'{", ".join(ambiguous[:3])})'
      ]
      if ambiguous
      else []
    )
    raise DataError(
      f'list file {list_split.list_path} does not match {where} by file name: '
      f'{"; ".join(problems)}. Check that the list belongs to this build (and '
      'to the split data.tfds_*_split names).'
    )
  return np.asarray(indices, np.int64)


def load_split(
  builder, split: str, num_classes: int, list_split=None
) -> readers.StreamSplit:
  """One split as labels + reader; with `list_split` (a parsed list file),
  only the list's images, in its order, with its labels (checked against the
  build's)."""
  tfds = _tfds()
  where = f'TFDS {builder.name}:{split} in {builder.data_dir}'
  if split not in builder.info.splits:
    raise DataError(
      f'{where} does not exist: the build has splits '
      f'{", ".join(builder.info.splits)}; set data.tfds_train_split / '
      'tfds_val_split / tfds_test_split to one of them.'
    )
  source = builder.as_data_source(
    split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
  )
  labels, names = _labels_and_names(
    builder, split, source, list_split is not None
  )
  if list_split is None:
    indices = np.arange(len(labels))
  else:
    indices = _match_list(names, list_split, where)
    differ = np.flatnonzero(labels[indices] != list_split.labels)
    if len(differ):
      line = differ[0]
      raise DataError(
        f'{len(differ)} labels of list file {list_split.list_path} differ from {where}\'s '
        f'(e.g. {list_split.paths[line]}: {list_split.labels[line]} in the list, '
        f'{labels[indices[line]]} in the build); the list and the build number the '
        'classes differently.'
      )
    where = f'{where}, the images of {os.path.basename(list_split.list_path)}'
  labels = labels[indices]
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if len(bad):
    raise DataError(
      f'{where}: {len(bad)} labels outside [0, {num_classes}) (e.g. '
      f'{labels[bad[0]]}; an unlabelled split such as a test split has -1). '
      'Use a labelled split, or fix --config.data.num_classes.'
    )
  return readers.StreamSplit(
    TfdsReader(builder, split, indices, source), labels.astype(np.int32), where
  )
