"""In-memory input pipeline: sampling, augmentation, sharding into global jax.Arrays.

Every random choice is a pure function of (seed, epoch) for the sample order and of
(seed, global sample position) for augmentation, so the batch of global step t does not
depend on where the iterator was started: a killed run resumed at step t sees the same data.
"""

import math
from typing import Iterator

import jax
import numpy as np

_TF_CONFIGURED = False


def import_tf():
  """Imports TensorFlow with GPUs hidden: TF must not grab accelerator memory JAX needs."""
  global _TF_CONFIGURED
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not _TF_CONFIGURED:
    try:
      tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF already initialised its devices; too late to change, not fatal
      pass
    _TF_CONFIGURED = True
  return tf


def normalization_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of images / 255, as float32 (C,) arrays."""
  images = np.asarray(images)
  c = images.shape[-1]
  total, total_sq, n = np.zeros(c), np.zeros(c), 0
  for chunk in np.array_split(images.reshape(-1, c), max(1, images.size // (1 << 24))):
    x = chunk.astype(np.float64) / 255.0  # float64 chunks: exact enough, bounded memory
    total += x.sum(0)
    total_sq += (x * x).sum(0)
    n += len(x)
  mean = total / n
  std = np.sqrt(np.maximum(total_sq / n - mean * mean, 0.0))
  return mean.astype(np.float32), std.astype(np.float32)


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Full batches per epoch (the remainder is dropped), at least 1."""
  return max(1, num_examples // global_batch_size)


def class_balanced_order(labels, num_samples: int, samples_per_class: int,
                         rng: np.random.Generator) -> np.ndarray:
  """MiSLAS class-aware sampling order (DESIGN §4) of `num_samples` indices into `labels`.

  Classes are visited in a random order that is redrawn each time every class has been
  visited once; each visit takes `samples_per_class` consecutive items from that class's own
  random cycle, which is redrawn when exhausted. Classes absent from `labels` are skipped.
  Draw order on `rng`: one permutation per class (ascending class), then the class cycle.
  """
  labels = np.asarray(labels)
  if samples_per_class < 1 or num_samples < 0 or labels.size == 0:
    raise ValueError(f"need samples_per_class >= 1, num_samples >= 0 and some labels; got "
                     f"{samples_per_class}, {num_samples}, {labels.size} labels.")
  members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
  cycles = [rng.permutation(m) for m in members]
  pos = [0] * len(members)
  class_cycle, cpos = rng.permutation(len(members)), 0
  out = np.empty(num_samples, np.int64)
  n = 0
  while n < num_samples:
    if cpos == len(members):
      class_cycle, cpos = rng.permutation(len(members)), 0
    k = class_cycle[cpos]
    cpos += 1
    need = min(samples_per_class, num_samples - n)
    while need:
      if pos[k] == len(cycles[k]):
        cycles[k], pos[k] = rng.permutation(members[k]), 0
      t = min(need, len(cycles[k]) - pos[k])
      out[n:n + t] = cycles[k][pos[k]:pos[k] + t]
      pos[k] += t
      n += t
      need -= t
  return out


def _local_rows(sharding, global_batch_size: int) -> np.ndarray:
  """Rows of a global batch that live on this process's devices, ascending.

  With the usual process-major device order these are [p*B/P, (p+1)*B/P). Reading them off
  the sharding keeps other meshes correct too, and is the row order that
  make_array_from_process_local_data expects.
  """
  axes = sharding.spec[0] if len(sharding.spec) else None
  axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  shards = math.prod(sharding.mesh.shape[a] for a in axes)
  if global_batch_size % shards:
    raise ValueError(
        f"global_batch_size={global_batch_size} is not divisible by the {shards} devices the "
        f"batch is split over; use a multiple of {shards} (e.g. "
        f"{max(shards, global_batch_size // shards * shards)}) or run on a device count that "
        f"divides {global_batch_size}.")
  slices = sharding.addressable_devices_indices_map((global_batch_size,)).values()
  rows = set()
  for s in slices:
    rows.update(range(*s[0].indices(global_batch_size)))
  return np.array(sorted(rows), np.int64)


def _to_global(sharding, local: np.ndarray, global_batch_size: int) -> jax.Array:
  return jax.make_array_from_process_local_data(
      sharding, local, (global_batch_size,) + local.shape[1:])


def _check_inputs(images, labels, mean, std):
  images, labels = np.asarray(images), np.asarray(labels)
  if images.ndim != 4 or images.dtype != np.uint8 or labels.shape != images.shape[:1]:
    raise ValueError(f"need uint8 images (N, H, W, C) and labels (N,); got {images.dtype} "
                     f"{images.shape} and {labels.shape}.")
  mean = np.asarray(mean, np.float32).reshape(-1)
  std = np.asarray(std, np.float32).reshape(-1)
  if mean.shape != std.shape or mean.size not in (1, images.shape[-1]) or (std <= 0).any():
    raise ValueError(f"mean/std must have 1 or {images.shape[-1]} entries and std > 0; got "
                     f"mean={mean}, std={std}.")
  return images, labels.astype(np.int32), mean, std


def _epoch_order(labels, epoch, *, seed, sampler, samples_per_class, length):
  """The global sample order of one epoch, `length` = steps_per_epoch * batch indices."""
  rng = np.random.default_rng([seed, epoch])
  n = len(labels)
  if sampler == "shuffle":
    # np.resize repeats the permutation when the data set is smaller than one batch.
    return np.resize(rng.permutation(n), length)
  return class_balanced_order(labels, max(n, length), samples_per_class, rng)[:length]


def make_train_iterator(images, labels, *, global_batch_size, sharding, seed, start_step=0,
                        augment="crop_flip", pad=4, sampler="shuffle", samples_per_class=4,
                        mean, std) -> Iterator[dict]:
  """Infinite iterator of {'image': float32 (B,H,W,C) normalised, 'label': int32 (B,)}.

  The batch yielded first is the one of global step `start_step`.
  """
  if augment not in ("crop_flip", "crop", "flip", "none"):
    raise ValueError(f"unknown augment {augment!r}; use 'crop_flip', 'crop', 'flip' or "
                     "'none'.")
  if sampler not in ("shuffle", "class_balanced"):
    raise ValueError(f"unknown sampler {sampler!r}; use 'shuffle' or 'class_balanced'.")
  images, labels, mean, std = _check_inputs(images, labels, mean, std)
  tf = import_tf()
  batch = global_batch_size
  rows = _local_rows(sharding, batch)
  spe = steps_per_epoch(len(labels), batch)
  _, h, w, _ = images.shape

  images_t, labels_t = tf.constant(images), tf.constant(labels)
  mean_t, std_t, rows_t = tf.constant(mean), tf.constant(std), tf.constant(rows)
  seed_t = tf.constant(seed, tf.int64)
  pad = pad if augment in ("crop_flip", "crop") else 0
  # 'crop' is for inputs whose mirror image is another class (digits).
  max_flip = 1 if augment == "crop" else 2

  def load(index, step):
    """One local batch. Vectorised: a per-element tf.data map costs ~60 us/element."""
    image = tf.gather(images_t, index)
    if augment != "none":
      # Draws for the whole global batch keyed on (seed, global step), then this process's
      # rows: the result is a function of (seed, global position) alone, whatever the
      # process count, tf.data parallelism or start step.
      offset_key, flip_key = tf.unstack(
          tf.random.experimental.stateless_split(tf.stack([seed_t, step]), 2))
      offset = tf.gather(tf.random.stateless_uniform(
          [batch, 2], offset_key, minval=0, maxval=2 * pad + 1, dtype=tf.int32), rows_t)
      flip = tf.gather(tf.random.stateless_uniform(
          [batch], flip_key, minval=0, maxval=max_flip, dtype=tf.int32), rows_t)
      # Zero (black) padding, then the crop window and the mirror as two batched gathers.
      image = tf.pad(image, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
      ys = offset[:, :1] + tf.range(h)[None]
      xs = offset[:, 1:] + tf.where(flip[:, None] == 1, tf.range(w - 1, -1, -1), tf.range(w))
      image = tf.gather(tf.gather(image, ys, axis=1, batch_dims=1), xs, axis=2, batch_dims=1)
    image = (tf.cast(image, tf.float32) / 255.0 - mean_t) / std_t
    return image, tf.gather(labels_t, index)

  def batches():
    epoch, first = divmod(start_step, spe)
    while True:
      order = _epoch_order(labels, epoch, seed=seed, sampler=sampler,
                           samples_per_class=samples_per_class, length=spe * batch)
      order = order.reshape(spe, batch)[first:, rows]
      step = epoch * spe + np.arange(first, spe, dtype=np.int64)
      # One small tf.data pipeline per epoch because the order is made by NumPy; a Python
      # generator source (from_generator) does not survive interpreter shutdown cleanly.
      ds = (tf.data.Dataset.from_tensor_slices((order, step))
            .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))
      for image, label in ds.as_numpy_iterator():
        yield {"image": _to_global(sharding, image, batch),
               "label": _to_global(sharding, label, batch)}
      epoch, first = epoch + 1, 0

  return batches()


def make_eval_iterator(images, labels, *, global_batch_size, sharding, mean,
                       std) -> Iterator[dict]:
  """One in-order pass of {'image', 'label', 'mask'}; the last batch is zero-padded, mask 0."""
  images, labels, mean, std = _check_inputs(images, labels, mean, std)
  batch = global_batch_size
  rows = _local_rows(sharding, batch)
  n = len(labels)

  def batches():  # a nested generator so that bad arguments raise at the call, not at next()
    for start in range(0, n, batch):
      index = start + rows
      real = index < n
      image = np.zeros((len(rows),) + images.shape[1:], np.float32)
      image[real] = (images[index[real]].astype(np.float32) / np.float32(255.0) - mean) / std
      label = np.where(real, labels[np.minimum(index, n - 1)], 0).astype(np.int32)
      yield {"image": _to_global(sharding, image, batch),
             "label": _to_global(sharding, label, batch),
             "mask": _to_global(sharding, real.astype(np.float32), batch)}

  return batches()
