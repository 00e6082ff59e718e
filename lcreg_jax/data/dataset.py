"""The data set as the rest of the package sees it: a small description
(`DatasetInfo`) and iterators of global batches.

Nothing outside `data/` touches images: models, stages and evaluation get the
class counts, image shape and split sizes from `info`, and batches from
`train_batches` / `eval_batches`. How the images are stored (in memory, or
streamed from files for ImageNet-scale data) stays behind this interface.
"""

import dataclasses
from typing import Iterator

import numpy as np

from lcreg_jax.data import augment
from lcreg_jax.data import imagenet_augment
from lcreg_jax.data import listfile
from lcreg_jax.data import pipeline
from lcreg_jax.data import readers
from lcreg_jax.data import sources
from lcreg_jax.data import streaming
from lcreg_jax.data import tfds_builds


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]  # (H, W, C) of one model input
  class_counts: np.ndarray  # (C,) training images per class
  split_sizes: dict[str, int]  # 'train', 'test', and 'val' if present

  def has_split(self, split: str) -> bool:
    return split in self.split_sizes

  def describe(self) -> str:
    counts = self.class_counts
    parts = [
      f'{self.split_sizes["train"]} train ({counts.max()}..{counts.min()} per class)'
    ]
    parts += [f'{n} {s}' for s, n in self.split_sizes.items() if s != 'train']
    return f'{self.name}: {", ".join(parts)}, {self.num_classes} classes'


class Dataset:
  """A long-tailed training split, an optional validation split and a balanced test split."""

  def __init__(self, arrays: sources.LongTailDataset, data_config):
    self._splits = {'train': arrays.train, 'test': arrays.test}
    if arrays.val is not None:
      self._splits['val'] = arrays.val
    self._config = data_config
    # Normalisation comes from the training split so that every stage, and a later
    # evaluation, sees the same input statistics.
    self._mean, self._std = augment.normalization_stats(arrays.train.images)
    self.info = DatasetInfo(
      name=arrays.name,
      num_classes=arrays.num_classes,
      image_shape=tuple(int(d) for d in arrays.train.images.shape[1:]),
      class_counts=arrays.class_counts,
      split_sizes={
        s: int(len(split.labels)) for s, split in self._splits.items()
      },
    )

  def train_batches(
    self,
    *,
    global_batch_size: int,
    sharding,
    seed: int,
    start_step: int,
    sampler: str = 'shuffle',
    samples_per_class: int = 4,
  ) -> Iterator[dict]:
    """Augmented training batches from global step `start_step` on, endlessly."""
    split = self._splits['train']
    return pipeline.make_train_iterator(
      split.images,
      split.labels,
      global_batch_size=global_batch_size,
      sharding=sharding,
      seed=seed,
      start_step=start_step,
      augment=self._config.augment,
      pad=self._config.pad,
      sampler=sampler,
      samples_per_class=samples_per_class,
      mean=self._mean,
      std=self._std,
    )

  def eval_batches(
    self, split: str, *, global_batch_size: int, sharding
  ) -> Iterator[dict]:
    """One in-order, unaugmented pass over `split` with a padding mask."""
    data = self._splits[split]
    return pipeline.make_eval_iterator(
      data.images,
      data.labels,
      global_batch_size=global_batch_size,
      sharding=sharding,
      mean=self._mean,
      std=self._std,
    )


def _info(name, num_classes, image_shape, splits) -> DatasetInfo:
  return DatasetInfo(
    name=name,
    num_classes=num_classes,
    image_shape=tuple(int(d) for d in image_shape),
    class_counts=np.bincount(
      splits['train'].labels, minlength=num_classes
    ).astype(np.int64),
    split_sizes={s: int(len(split.labels)) for s, split in splits.items()},
  )


class FileDataset:
  """Encoded images streamed from image files named by list files
  (`data.source='list'`) or from a prepared TFDS build
  (`data.source='tfds_stream'`); `splits` maps split names to
  `readers.StreamSplit`.

  With `data.augment='imagenet'` the MiSLAS ImageNet recipe (docs/method.md §5):
  random-resized crop, flip, colour jitter for training; resize to
  `eval_resize` and centre crop for evaluation; ImageNet mean/std. With the
  CIFAR-style augmentations (small images of one size, e.g. a data set
  written out as PNG files) the images are decoded at their size and
  augmented exactly like the in-memory pipeline's, normalised with the
  training split's statistics.
  """

  def __init__(self, splits: dict, data_config, name: str):
    self._splits = splits
    self._config = cfg = data_config
    self.info = _info(
      name,
      cfg.num_classes,
      (cfg.image_size, cfg.image_size, cfg.channels),
      splits,
    )
    self._eval_finish = None
    if cfg.augment == 'imagenet':
      # Random parameters drawn per batch in NumPy, the uint8 crop per example
      # on the host, flip, jitter and normalisation on the accelerator
      # (streaming.DrawnAugment with `finish`).
      self._train_fn = lambda global_batch_size: imagenet_augment.TrainAugment(
        size=cfg.image_size
      )
      self._eval_fn = lambda tf, encoded, seed, position: (
        imagenet_augment.eval_crop(
          tf, encoded, resize=cfg.eval_resize, size=cfg.image_size
        )
      )
      self._eval_finish = imagenet_augment.eval_finish
    else:
      self._train_fn, self._eval_fn = self._small_image_fns()

  def _decode(self, tf, encoded):
    """uint8 (H, W, C) at the configured size; another size is a clear error."""
    cfg = self._config
    image = tf.io.decode_image(
      encoded, channels=cfg.channels, expand_animations=False
    )
    tf.debugging.assert_equal(
      tf.shape(image)[:2],
      [cfg.image_size, cfg.image_size],
      message=f'image size is not {cfg.image_size}x{cfg.image_size} (data.image_size)',
    )
    return tf.ensure_shape(
      image, (cfg.image_size, cfg.image_size, cfg.channels)
    )

  def _small_image_fns(self):
    cfg = self._config
    tf = pipeline.import_tf()
    train = self._splits['train']
    # One decoding pass for the statistics, computed as the in-memory path does.
    images = streaming.decode_all(
      train.reader,
      self._decode,
      on_bad_image=cfg.on_bad_image,
      where=train.where,
    )
    mean, std = augment.normalization_stats(images)
    mean_t, std_t = tf.constant(mean), tf.constant(std)

    def normalise(image):
      return (tf.cast(image, tf.float32) / 255.0 - mean_t) / std_t

    def train_fn(global_batch_size):
      # The CIFAR-style draws are made per global batch (augment.crop_flip).
      def example(tf, encoded, seed, position):
        image = augment.crop_flip_example(
          tf,
          self._decode(tf, encoded),
          seed=seed,
          position=position,
          global_batch_size=global_batch_size,
          augment=cfg.augment,
          pad=cfg.pad,
        )
        return normalise(image)

      return example

    def eval_fn(tf, encoded, seed, position):
      del seed, position
      return normalise(self._decode(tf, encoded))

    return train_fn, eval_fn

  def train_batches(
    self,
    *,
    global_batch_size: int,
    sharding,
    seed: int,
    start_step: int,
    sampler: str = 'shuffle',
    samples_per_class: int = 4,
  ) -> Iterator[dict]:
    """Augmented training batches from global step `start_step` on, endlessly."""
    split = self._splits['train']
    return streaming.make_train_iterator(
      split.reader,
      split.labels,
      global_batch_size=global_batch_size,
      sharding=sharding,
      seed=seed,
      start_step=start_step,
      sampler=sampler,
      samples_per_class=samples_per_class,
      example_fn=self._train_fn(global_batch_size),
      on_bad_image=self._config.on_bad_image,
      where=split.where,
    )

  def eval_batches(
    self, split: str, *, global_batch_size: int, sharding
  ) -> Iterator[dict]:
    """One in-order, unaugmented pass over `split` with a padding mask."""
    data = self._splits[split]
    return streaming.make_eval_iterator(
      data.reader,
      data.labels,
      global_batch_size=global_batch_size,
      sharding=sharding,
      example_fn=self._eval_fn,
      where=data.where,
      finish=self._eval_finish,
    )


def _read_list(cfg, path):
  return listfile.read_list(
    path,
    cfg.image_root,
    cfg.num_classes,
    check_files=cfg.check_files and cfg.source == 'list',
  )


def _list_splits(cfg) -> dict:
  """source=list: the list files' images as files."""

  def split(path):
    parsed = _read_list(cfg, path)
    return readers.StreamSplit(
      readers.FileReader(parsed.paths), parsed.labels, path
    )

  splits = {'train': split(cfg.train_list), 'test': split(cfg.test_list)}
  if cfg.val_list:
    splits['val'] = split(cfg.val_list)
  return splits


def _tfds_splits(cfg) -> dict:
  """source=tfds_stream: the build's splits, or the list files' images in them."""
  builder = tfds_builds.open_builder(cfg.tfds_name, cfg.tfds_data_dir)
  wanted = {
    'train': (cfg.tfds_train_split, cfg.train_list),
    'test': (cfg.tfds_test_split, cfg.test_list),
  }
  if cfg.tfds_val_split:
    wanted['val'] = (cfg.tfds_val_split, cfg.val_list)
  return {
    name: tfds_builds.load_split(
      builder, split, cfg.num_classes, _read_list(cfg, path) if path else None
    )
    for name, (split, path) in wanted.items()
  }


def _load_streamed(cfg) -> FileDataset:
  splits = _list_splits(cfg) if cfg.source == 'list' else _tfds_splits(cfg)
  if 'val' not in splits and cfg.val_per_class > 0:
    train = splits['train']
    rest, val = sources.carve_val(
      sources.Split(np.arange(len(train.labels)), train.labels),
      cfg.num_classes,
      cfg.val_per_class,
    )
    splits['train'] = readers.StreamSplit(
      train.reader.subset(rest.images), rest.labels, train.where
    )
    splits['val'] = readers.StreamSplit(
      train.reader.subset(val.images), val.labels, train.where
    )
  counts = np.bincount(splits['train'].labels, minlength=cfg.num_classes)
  if (counts == 0).any():
    raise sources.DataError(
      f'classes {np.flatnonzero(counts == 0).tolist()[:10]} have no training images in '
      f'{splits["train"].where}; set --config.data.num_classes to the number of classes '
      'the data has, or fix the list.'
    )
  name = cfg.name or ('list' if cfg.source == 'list' else cfg.tfds_name)
  if cfg.imbalance_factor > 1:
    name = f'{name}-lt{cfg.imbalance_factor:g}'
  return FileDataset(splits, cfg, name)


def load(data_config):
  """The configured data set: in memory (digits, IDX, CIFAR, TFDS) or streamed
  from image files named by list files (`source='list'`) or from a prepared
  TFDS build (`source='tfds_stream'`)."""
  if data_config.source in ('list', 'tfds_stream'):
    return _load_streamed(data_config)
  return Dataset(sources.load_dataset(data_config), data_config)
