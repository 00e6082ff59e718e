"""Streaming input for large image sets: only labels and a reader (image
files, or a TFDS build's records; `readers.py`) in memory, images read,
decoded and augmented in tf.data as they are needed.

The sample order is `samplers.epoch_order`, the same as the in-memory
pipeline's, and every random draw of an image is keyed on (seed, global
sample position), so a killed run resumes with exactly the batches an
uninterrupted one would see, on any number of processes.

A file that cannot be read or decoded either stops the run with a message
naming it (`on_bad_image='stop'`), or is skipped and counted
(`'skip'`; the batches after it then shift by one sample, so exact resume
holds only while no file is bad).
"""

import functools
from typing import Callable, Iterator, Protocol

from absl import logging
import jax
import numpy as np

from lcreg_jax.data import pipeline
from lcreg_jax.data import readers
from lcreg_jax.data import samplers
from lcreg_jax.errors import DataError

# example_fn(tf, encoded_bytes, seed, position) -> float32 image (H, W, C),
# normalised; `position` is the global sample position (int64 scalar). Or, for
# make_train_iterator, a `DrawnAugment`.
ExampleFn = Callable


class DrawnAugment(Protocol):
  """A training augmentation whose random parameters are drawn in NumPy, for a
  whole batch of positions at once (e.g. imagenet_augment.TrainAugment):

    params(seed, positions) -> dict of NumPy arrays, leading dimension
      len(positions): every random parameter, a pure function of (seed,
      position) per row; computed per local batch in a tf.numpy_function.
    example(tf, encoded, params_row) -> image (H, W, C), per example in the
      tf.data map (params_row: the example's row of each array, as tensors);
      float32 and normalised, or, with `finish`, what `finish` takes.
  and optionally, to finish the views on the accelerator:
    device_keys: the names of the parameters `finish` needs;
    finish(images, params) -> float32 [B, H, W, C], normalised: a jax.numpy
      function of the global batch of `example` outputs and those parameters
      (global arrays of the same rows), jitted over the batch's sharding.
  """

  def params(self, seed: int, positions: np.ndarray) -> dict: ...
  def example(self, tf, encoded, params): ...


def _is_drawn(example_fn) -> bool:
  return all(
    callable(getattr(example_fn, a, None)) for a in ('params', 'example')
  )


@functools.lru_cache(maxsize=None)
def _jit(finish):
  """One compiled `finish` per function (elementwise per example: every
  device works on its own rows, the output keeps the batch's sharding)."""
  return jax.jit(finish)


def _single(tf, example_fn, encoded, seed, position):
  """example_fn's image for one example, either kind (the bad-file search)."""
  if not _is_drawn(example_fn):
    return example_fn(
      tf, encoded, tf.constant(seed, tf.int64), tf.constant(position, tf.int64)
    )
  params = example_fn.params(seed, np.array([position], np.int64))
  return example_fn.example(
    tf, encoded, {k: tf.constant(v[0]) for k, v in params.items()}
  )


# How far past the last delivered sample the search for a bad file goes.
_SEARCH = 4096


def _find_bad_file(tf, example_fn, reader, candidates, seed):
  """The first of `candidates` (example indices) that fails, and why."""
  for index in candidates[:_SEARCH]:
    try:
      _single(
        tf, example_fn, reader.read(tf, tf.constant(index, tf.int64)), seed, 0
      )
    except tf.errors.OpError as e:
      return reader.name(int(index)), e.message.splitlines()[0][:200]
  return None, None


def _bad_file_error(
  tf, example_fn, reader, candidates, seed, error, where, fix
):
  path, why = _find_bad_file(tf, example_fn, reader, candidates, seed)
  if path is None:
    path, why = 'one of the images', error.message.splitlines()[0][:300]
  return DataError(
    f'{where}: cannot read or decode {path} ({why}). Replace or '
    f'remove the file (and its line in the list){fix}.'
  )


class _TrainStream:
  """make_train_iterator's steps: each epoch's order and global positions,
  its tf.data pipeline, the local batches (re-cut after skipped files) and
  the global batches."""

  def __init__(
    self,
    tf,
    reader,
    labels,
    *,
    batch: int,
    sharding,
    seed: int,
    sampler: str,
    samples_per_class: int,
    example_fn,
    on_bad_image: str,
    where: str,
    threads: int | None,
  ):
    self.tf, self.reader, self.labels = tf, reader, labels
    self.batch, self.sharding, self.seed = batch, sharding, seed
    self.sampler, self.samples_per_class = sampler, samples_per_class
    self.example_fn, self.on_bad_image, self.where = (
      example_fn,
      on_bad_image,
      where,
    )
    self.threads = threads
    self.rows = pipeline.local_rows(sharding, batch)
    self.local = len(self.rows)
    self.spe = samplers.steps_per_epoch(
      samplers.epoch_samples(np.bincount(labels), sampler), batch
    )
    self.labels_t = tf.constant(labels)
    self.seed_t = tf.constant(seed, tf.int64)
    self.drawn = _is_drawn(example_fn)
    self.finish = getattr(example_fn, 'finish', None) if self.drawn else None
    if self.drawn:
      # Names, dtypes and shapes of the parameters, from one row.
      self.spec = {
        k: (tf.as_dtype(v.dtype), v.shape[1:])
        for k, v in example_fn.params(seed, np.zeros(1, np.int64)).items()
      }
      self.keys = sorted(self.spec)
    self.carry, self.skipped = None, 0

  def load(self, index, position):
    image = self.example_fn(
      self.tf, self.reader.read(self.tf, index), self.seed_t, position
    )
    return image, self.tf.gather(self.labels_t, index), position

  def with_params(self, index, position):
    """A batch of (index, position) with its parameters, drawn in NumPy."""

    def draw(pos):
      params = self.example_fn.params(self.seed, pos)
      return [params[k] for k in self.keys]

    values = self.tf.numpy_function(
      draw, [position], [self.spec[k][0] for k in self.keys], stateful=False
    )
    params = {}
    for k, v in zip(self.keys, values):
      v.set_shape([None, *self.spec[k][1]])
      params[k] = v
    return index, position, params

  def load_drawn(self, index, position, params):
    image = self.example_fn.example(
      self.tf, self.reader.read(self.tf, index), params
    )
    return image, self.tf.gather(self.labels_t, index), position

  def global_batch(self, image, label, position):
    sharding, batch = self.sharding, self.batch
    out = {
      'image': pipeline.to_global(sharding, image, batch),
      'label': pipeline.to_global(sharding, label, batch),
    }
    if self.finish is not None:
      # The parameters again (cheap NumPy), rather than through tf.data.
      params = self.example_fn.params(self.seed, position)
      out['image'] = _jit(self.finish)(
        out['image'],
        {
          k: pipeline.to_global(sharding, params[k], batch)
          for k in self.example_fn.device_keys
        },
      )
    return out

  def epoch_data(self, epoch, first):
    """This process's example indices and global positions of an epoch, from
    step `first` of it on."""
    spe, batch, rows = self.spe, self.batch, self.rows
    order = samplers.epoch_order(
      self.labels,
      epoch,
      seed=self.seed,
      sampler=self.sampler,
      samples_per_class=self.samples_per_class,
      length=spe * batch,
    )
    order = order.reshape(spe, batch)[first:, rows].reshape(-1)
    steps = epoch * spe + np.arange(first, spe, dtype=np.int64)
    positions = (steps[:, None] * batch + rows[None]).reshape(-1)
    return order, positions

  def epoch_dataset(self, order, positions):
    """The tf.data pipeline of (image, label, position) local batches."""
    tf = self.tf
    ds = tf.data.Dataset.from_tensor_slices((order, positions))
    if self.drawn:
      # Parameters drawn per batch of positions, then the image work per example
      # (the parameters travel with each example, so a skipped file shifts nothing).
      ds = (
        ds.batch(self.local)
        .map(self.with_params)
        .unbatch()
        .map(
          self.load_drawn,
          num_parallel_calls=tf.data.AUTOTUNE,
          deterministic=True,
        )
      )
    else:
      ds = ds.map(
        self.load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
      )
    if self.on_bad_image == 'skip':
      ds = ds.ignore_errors()
    ds = ds.batch(self.local).prefetch(tf.data.AUTOTUNE)
    if self.threads is not None:
      options = tf.data.Options()
      options.threading.private_threadpool_size = self.threads
      options.threading.max_intra_op_parallelism = 1
      ds = ds.with_options(options)
    return ds

  def count_skipped(self, lost: int):
    self.skipped += lost
    logging.warning(
      '%s: skipped %d unreadable image(s), %d so far.',
      self.where,
      lost,
      self.skipped,
    )

  def recut(self, image, label, position, positions, seen: int):
    """on_bad_image='skip': full local batches from what arrived, the rest
    carried to the next; samples that never arrive were skipped, counted by
    position. Yields the batches, then returns the samples seen so far."""
    lost = int(
      np.searchsorted(positions, position[-1]) + 1 - seen - len(position)
    )
    if lost:
      self.count_skipped(lost)
    seen += len(position) + lost
    if self.carry is not None:
      image, label, position = (
        np.concatenate([c, x])
        for c, x in zip(self.carry, (image, label, position))
      )
      self.carry = None
    local = self.local
    while len(label) >= local:
      yield self.global_batch(image[:local], label[:local], position[:local])
      image, label, position = image[local:], label[local:], position[local:]
    if len(label):
      self.carry = (image, label, position)
    return seen

  def batches(self, start_step: int):
    tf = self.tf
    epoch, first = divmod(start_step, self.spe)
    while True:
      order, positions = self.epoch_data(epoch, first)
      seen = 0
      try:
        for image, label, position in self.epoch_dataset(
          order, positions
        ).as_numpy_iterator():
          if self.on_bad_image == 'skip':
            seen = yield from self.recut(
              image, label, position, positions, seen
            )
          else:
            seen += len(position)
            yield self.global_batch(image, label, position)
      except tf.errors.OpError as e:
        raise _bad_file_error(
          tf,
          self.example_fn,
          self.reader,
          order[seen:],
          self.seed,
          e,
          self.where,
          ', or set --config.data.on_bad_image=skip to train on without it '
          '(skipped images are counted in the log)',
        ) from e
      if self.on_bad_image == 'skip' and seen < len(positions):
        self.count_skipped(len(positions) - seen)
      epoch, first = epoch + 1, 0


def make_train_iterator(
  images,
  labels,
  *,
  global_batch_size: int,
  sharding,
  seed: int,
  start_step: int = 0,
  sampler: str = 'shuffle',
  samples_per_class: int = 4,
  example_fn: ExampleFn,
  on_bad_image: str = 'stop',
  where: str = 'training images',
  threads: int | None = None,
) -> Iterator[dict]:
  """Endless global batches {'image', 'label'} from global step `start_step` on.

  `images`: a `readers.Reader`, or an array of image file paths.

  `example_fn`: an `ExampleFn`, applied per example; or a `DrawnAugment`,
  whose parameters are drawn per local batch in NumPy, then its image part
  applied per example.

  `threads`: None (default) leaves tf.data's thread use as it is (its shared
  pool, AUTOTUNE map parallelism). An int runs each epoch's pipeline on a
  private pool of that many threads, with every op single-threaded
  (`tf.data.Options().threading`: private_threadpool_size=threads,
  max_intra_op_parallelism=1), e.g. to compare with a loader of as many worker
  processes (benchmarks/input_throughput.py). The batches are the same either
  way; only the speed changes.
  """
  if on_bad_image not in ('stop', 'skip'):
    raise ValueError(
      f"on_bad_image must be 'stop' or 'skip', got {on_bad_image!r}"
    )
  tf = pipeline.import_tf()
  reader, labels = readers.as_reader(images), np.asarray(labels, np.int32)
  stream = _TrainStream(
    tf,
    reader,
    labels,
    batch=global_batch_size,
    sharding=sharding,
    seed=seed,
    sampler=sampler,
    samples_per_class=samples_per_class,
    example_fn=example_fn,
    on_bad_image=on_bad_image,
    where=where,
    threads=threads,
  )
  return stream.batches(start_step)


def decode_all(
  images, decode_fn, *, on_bad_image: str = 'stop', where: str = 'images'
) -> np.ndarray:
  """All images stacked, for one pass such as normalisation statistics.

  `images`: a reader or an array of paths. `decode_fn(tf, encoded)` -> uint8
  image of a fixed shape. A bad file stops with its name, or is left out and
  counted with on_bad_image='skip'.
  """
  tf = pipeline.import_tf()
  reader = readers.as_reader(images)
  ds = tf.data.Dataset.range(len(reader)).map(
    lambda i: decode_fn(tf, reader.read(tf, i)),
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )
  if on_bad_image == 'skip':
    ds = ds.ignore_errors()
  try:
    decoded = list(ds.as_numpy_iterator())
  except tf.errors.OpError as e:
    example = lambda tf, encoded, seed, position: decode_fn(tf, encoded)
    raise _bad_file_error(
      tf,
      example,
      reader,
      np.arange(len(reader)),
      0,
      e,
      where,
      ', or set --config.data.on_bad_image=skip',
    ) from e
  if len(decoded) < len(reader):
    logging.warning(
      '%s: skipped %d unreadable image(s).', where, len(reader) - len(decoded)
    )
  return np.stack(decoded)


def make_eval_iterator(
  images,
  labels,
  *,
  global_batch_size: int,
  sharding,
  example_fn: ExampleFn,
  where: str = 'evaluation images',
  finish: Callable | None = None,
) -> Iterator[dict]:
  """One in-order pass {'image', 'label', 'mask'}; padding rows have mask 0.

  `finish(images) -> float32 images`: a jax.numpy function applied, jitted, to
  each global batch of `example_fn` outputs on the accelerator (e.g. the
  normalisation of uint8 crops).

  Every image must be readable: a bad one stops with its name, since an
  evaluation that leaves examples out would not be comparable.
  """
  tf = pipeline.import_tf()
  reader, labels = readers.as_reader(images), np.asarray(labels, np.int32)
  batch = global_batch_size
  rows = pipeline.local_rows(sharding, batch)
  n = len(labels)
  starts = np.arange(0, n, batch)
  index = (starts[:, None] + rows[None]).reshape(-1)
  real = index < n
  index = np.minimum(index, n - 1)  # padding rows read a real file, masked out

  def load(i):
    return example_fn(
      tf, reader.read(tf, i), tf.constant(0, tf.int64), tf.constant(0, tf.int64)
    )

  def batches():
    ds = (
      tf.data.Dataset.from_tensor_slices(index)
      .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      .batch(len(rows))
      .prefetch(tf.data.AUTOTUNE)
    )
    done = 0
    try:
      for step, image in enumerate(ds.as_numpy_iterator()):
        sel = slice(step * len(rows), (step + 1) * len(rows))
        mask = real[sel].astype(np.float32)
        done = sel.stop
        image = pipeline.to_global(
          sharding,
          np.where(real[sel][:, None, None, None], image, 0).astype(
            image.dtype
          ),
          batch,
        )
        yield {
          'image': image if finish is None else _jit(finish)(image),
          'label': pipeline.to_global(
            sharding,
            np.where(real[sel], labels[index[sel]], 0).astype(np.int32),
            batch,
          ),
          'mask': pipeline.to_global(sharding, mask, batch),
        }
    except tf.errors.OpError as e:
      raise _bad_file_error(
        tf,
        example_fn,
        reader,
        index[done:],
        0,
        e,
        where,
        ': evaluation needs every image',
      ) from e

  return batches()
