"""tf.data input: sampled, augmented, normalised batches as global jax.Arrays.

Each process builds only its rows of every global batch and
`jax.make_array_from_process_local_data` assembles the global array. What a
batch holds is a function of (seed, global step) alone (see samplers and
augment), so a resumed run sees exactly the batches of an uninterrupted one.
"""

import math
from typing import Iterator

import jax
import numpy as np

from lcreg_jax.data import augment as augment_lib
from lcreg_jax.data import samplers

_TF_CONFIGURED = False


def import_tf():
  """Imports TensorFlow with GPUs hidden: TF must not grab accelerator memory JAX needs."""
  global _TF_CONFIGURED
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  if not _TF_CONFIGURED:
    try:
      tf.config.set_visible_devices([], "GPU")
    except (
      RuntimeError
    ):  # TF already initialised its devices; too late to change, not fatal
      pass
    _TF_CONFIGURED = True
  return tf


def local_rows(sharding, global_batch_size: int) -> np.ndarray:
  """Rows of a global batch that live on this process's devices, ascending.

  With the usual process-major device order these are [p*B/P, (p+1)*B/P). Reading them off
  the sharding keeps other meshes correct too, and is the row order that
  make_array_from_process_local_data expects.
  """
  axes = sharding.spec[0] if len(sharding.spec) else None
  axes = (
    () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  )
  shards = math.prod(sharding.mesh.shape[a] for a in axes)
  if global_batch_size % shards:
    raise ValueError(
      f"global_batch_size={global_batch_size} is not divisible by the {shards} devices the "
      f"batch is split over; use a multiple of {shards} (e.g. "
      f"{max(shards, global_batch_size // shards * shards)}) or run on a device count that "
      f"divides {global_batch_size}."
    )
  slices = sharding.addressable_devices_indices_map(
    (global_batch_size,)
  ).values()
  rows = set()
  for s in slices:
    rows.update(range(*s[0].indices(global_batch_size)))
  return np.array(sorted(rows), np.int64)


def to_global(sharding, local: np.ndarray, global_batch_size: int) -> jax.Array:
  return jax.make_array_from_process_local_data(
    sharding, local, (global_batch_size,) + local.shape[1:]
  )


def _check_inputs(images, labels, mean, std):
  images, labels = np.asarray(images), np.asarray(labels)
  if (
    images.ndim != 4
    or images.dtype != np.uint8
    or labels.shape != images.shape[:1]
  ):
    raise ValueError(
      f"need uint8 images (N, H, W, C) and labels (N,); got {images.dtype} "
      f"{images.shape} and {labels.shape}."
    )
  mean = np.asarray(mean, np.float32).reshape(-1)
  std = np.asarray(std, np.float32).reshape(-1)
  if (
    mean.shape != std.shape
    or mean.size not in (1, images.shape[-1])
    or (std <= 0).any()
  ):
    raise ValueError(
      f"mean/std must have 1 or {images.shape[-1]} entries and std > 0; got "
      f"mean={mean}, std={std}."
    )
  return images, labels.astype(np.int32), mean, std


def _check_choices(augment: str, sampler: str):
  if augment not in augment_lib.AUGMENTATIONS or augment == "imagenet":
    raise ValueError(
      f"unknown augment {augment!r} for in-memory images; use 'crop_flip', "
      "'crop', 'flip' or 'none'."
    )
  if sampler not in samplers.SAMPLERS:
    raise ValueError(
      f"unknown sampler {sampler!r}; use 'shuffle' or 'class_balanced'."
    )


def make_train_iterator(
  images,
  labels,
  *,
  global_batch_size,
  sharding,
  seed,
  start_step=0,
  augment="crop_flip",
  pad=4,
  sampler="shuffle",
  samples_per_class=4,
  mean,
  std,
) -> Iterator[dict]:
  """Infinite iterator of {'image': float32 (B,H,W,C) normalised, 'label': int32 (B,)}.

  The batch yielded first is the one of global step `start_step`.
  """
  _check_choices(augment, sampler)
  images, labels, mean, std = _check_inputs(images, labels, mean, std)
  tf = import_tf()
  batch = global_batch_size
  rows = local_rows(sharding, batch)
  spe = samplers.steps_per_epoch(
    samplers.epoch_samples(np.bincount(labels), sampler), batch
  )

  images_t, labels_t = tf.constant(images), tf.constant(labels)
  mean_t, std_t, rows_t = tf.constant(mean), tf.constant(std), tf.constant(rows)
  seed_t = tf.constant(seed, tf.int64)

  def load(index, step):
    """One local batch. Vectorised: a per-element tf.data map costs ~60 us/element."""
    image = augment_lib.crop_flip(
      tf,
      tf.gather(images_t, index),
      seed=seed_t,
      step=step,
      rows=rows_t,
      global_batch_size=batch,
      augment=augment,
      pad=pad,
    )
    image = (tf.cast(image, tf.float32) / 255.0 - mean_t) / std_t
    return image, tf.gather(labels_t, index)

  def batches():
    epoch, first = divmod(start_step, spe)
    while True:
      order = samplers.epoch_order(
        labels,
        epoch,
        seed=seed,
        sampler=sampler,
        samples_per_class=samples_per_class,
        length=spe * batch,
      )
      order = order.reshape(spe, batch)[first:, rows]
      step = epoch * spe + np.arange(first, spe, dtype=np.int64)
      # One small tf.data pipeline per epoch because the order is made by NumPy; a Python
      # generator source (from_generator) does not survive interpreter shutdown cleanly.
      ds = (
        tf.data.Dataset.from_tensor_slices((order, step))
        .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
      )
      for image, label in ds.as_numpy_iterator():
        yield {
          "image": to_global(sharding, image, batch),
          "label": to_global(sharding, label, batch),
        }
      epoch, first = epoch + 1, 0

  return batches()


def make_eval_iterator(
  images, labels, *, global_batch_size, sharding, mean, std
) -> Iterator[dict]:
  """One in-order pass of {'image', 'label', 'mask'}; the last batch is zero-padded, mask 0."""
  images, labels, mean, std = _check_inputs(images, labels, mean, std)
  batch = global_batch_size
  rows = local_rows(sharding, batch)
  n = len(labels)

  def batches():  # a nested generator so that bad arguments raise at the call, not at next()
    for start in range(0, n, batch):
      index = start + rows
      real = index < n
      image = np.zeros((len(rows),) + images.shape[1:], np.float32)
      image[real] = (
        images[index[real]].astype(np.float32) / np.float32(255.0) - mean
      ) / std
      label = np.where(real, labels[np.minimum(index, n - 1)], 0).astype(
        np.int32
      )
      yield {
        "image": to_global(sharding, image, batch),
        "label": to_global(sharding, label, batch),
        "mask": to_global(sharding, real.astype(np.float32), batch),
      }

  return batches()
