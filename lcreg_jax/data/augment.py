"""CIFAR-style augmentation (zero-pad, random crop, horizontal flip) and
normalisation, as batched TensorFlow ops inside the tf.data pipeline.

Random draws are keyed on (seed, global step) for the whole global batch and
then restricted to this process's rows, so an image's augmentation depends
only on (seed, global sample position): not on the process count, tf.data
parallelism or the step a run resumed from.
"""

import numpy as np

AUGMENTATIONS = ("crop_flip", "crop", "flip", "none")


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


def crop_flip(tf, images, *, seed, step, rows, global_batch_size: int, augment: str,
              pad: int):
  """Augments one local batch of uint8 images (B_local, H, W, C).

  Args:
    tf: the TensorFlow module (imported by the caller with GPUs hidden).
    images: this process's rows of the global batch of `step`.
    seed, step: int64 scalar tensors keying the draws.
    rows: int tensor, positions of `images` within the global batch.
    global_batch_size: size of the global batch the draws are made for.
    augment: one of AUGMENTATIONS; 'crop' never mirrors (for digits, whose
      mirror image can be another class).
    pad: zero padding on each side before the crop.
  """
  if augment not in AUGMENTATIONS:
    raise ValueError(f"unknown augment {augment!r}; use one of {', '.join(AUGMENTATIONS)}.")
  if augment == "none":
    return images
  pad = pad if augment in ("crop_flip", "crop") else 0
  max_flip = 1 if augment == "crop" else 2
  h, w = images.shape[1], images.shape[2]
  offset_key, flip_key = tf.unstack(
      tf.random.experimental.stateless_split(tf.stack([seed, step]), 2))
  offset = tf.gather(tf.random.stateless_uniform(
      [global_batch_size, 2], offset_key, minval=0, maxval=2 * pad + 1, dtype=tf.int32), rows)
  flip = tf.gather(tf.random.stateless_uniform(
      [global_batch_size], flip_key, minval=0, maxval=max_flip, dtype=tf.int32), rows)
  # Zero (black) padding, then the crop window and the mirror as two batched gathers.
  images = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
  ys = offset[:, :1] + tf.range(h)[None]
  xs = offset[:, 1:] + tf.where(flip[:, None] == 1, tf.range(w - 1, -1, -1), tf.range(w))
  return tf.gather(tf.gather(images, ys, axis=1, batch_dims=1), xs, axis=2, batch_dims=1)
