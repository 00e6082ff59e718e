"""Where a streamed example's encoded image comes from.

The streaming pipeline (`streaming.py`) asks a reader for the encoded bytes
of example `index` inside tf.data, and for a name to quote when that image is
bad. Two readers: image files named by a list (`FileReader`), and records of
a prepared TFDS build read by random access (`tfds_builds.TfdsReader`). Both
read one example at a time, so each process reads only the rows of the
global batch that it feeds.
"""

import dataclasses
from typing import Protocol

import numpy as np

from lcreg_jax.data import pipeline


class Reader(Protocol):
  def __len__(self) -> int: ...
  def read(self, tf, index):
    """Encoded image bytes (scalar tf.string) of example `index` (int64 tensor)."""

  def name(self, index: int) -> str:
    """What to call example `index` in a message (its file, or its record)."""

  def subset(self, indices: np.ndarray) -> 'Reader':
    """The reader of examples `indices`, in that order."""


class FileReader:
  """Image files, one per example."""

  def __init__(self, paths):
    self.paths = np.asarray(paths).astype(str)
    self._paths_t = pipeline.import_tf().constant(self.paths)

  def __len__(self) -> int:
    return len(self.paths)

  def read(self, tf, index):
    return tf.io.read_file(tf.gather(self._paths_t, index))

  def name(self, index: int) -> str:
    return str(self.paths[index])

  def subset(self, indices: np.ndarray) -> 'FileReader':
    return FileReader(self.paths[indices])


def as_reader(images) -> Reader:
  """A reader as it is, or a FileReader over an array of paths."""
  return images if hasattr(images, 'read') else FileReader(images)


@dataclasses.dataclass(frozen=True)
class StreamSplit:
  """One split of a streamed data set: only labels and a reader in memory."""

  reader: Reader
  labels: np.ndarray  # (N,) int32
  where: str  # where it came from (list file, TFDS split), for messages
