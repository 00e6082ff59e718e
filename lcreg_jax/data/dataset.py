"""The data set as the rest of the package sees it: a small description
(`DatasetInfo`) and iterators of global batches.

Nothing outside `data/` touches images: models, stages and evaluation get the
class counts, image shape and split sizes from `info`, and batches from
`train_batches` / `eval_batches`. How the images are stored (in memory today,
streamed from files for ImageNet-scale data) stays behind this interface.
"""

import dataclasses
from typing import Iterator

import numpy as np

from lcreg_jax.data import augment
from lcreg_jax.data import pipeline
from lcreg_jax.data import sources


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]   # (H, W, C) of one model input
  class_counts: np.ndarray            # (C,) training images per class
  split_sizes: dict[str, int]         # 'train', 'test', and 'val' if present

  def has_split(self, split: str) -> bool:
    return split in self.split_sizes

  def describe(self) -> str:
    counts = self.class_counts
    parts = [f'{self.split_sizes["train"]} train ({counts.max()}..{counts.min()} per class)']
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
        name=arrays.name, num_classes=arrays.num_classes,
        image_shape=tuple(int(d) for d in arrays.train.images.shape[1:]),
        class_counts=arrays.class_counts,
        split_sizes={s: int(len(split.labels)) for s, split in self._splits.items()})

  def train_batches(self, *, global_batch_size: int, sharding, seed: int, start_step: int,
                    sampler: str = 'shuffle', samples_per_class: int = 4) -> Iterator[dict]:
    """Augmented training batches from global step `start_step` on, endlessly."""
    split = self._splits['train']
    return pipeline.make_train_iterator(
        split.images, split.labels, global_batch_size=global_batch_size, sharding=sharding,
        seed=seed, start_step=start_step, augment=self._config.augment, pad=self._config.pad,
        sampler=sampler, samples_per_class=samples_per_class, mean=self._mean, std=self._std)

  def eval_batches(self, split: str, *, global_batch_size: int, sharding) -> Iterator[dict]:
    """One in-order, unaugmented pass over `split` with a padding mask."""
    data = self._splits[split]
    return pipeline.make_eval_iterator(
        data.images, data.labels, global_batch_size=global_batch_size, sharding=sharding,
        mean=self._mean, std=self._std)


def load(data_config) -> Dataset:
  """Reads the configured source and applies the long-tailed protocol (DESIGN §1)."""
  return Dataset(sources.load_dataset(data_config), data_config)
