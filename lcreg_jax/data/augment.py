"""CIFAR-style augmentation (zero-pad, random crop, horizontal flip) and
normalisation, as batched TensorFlow ops inside the tf.data pipeline.

Random draws are keyed on (seed, global step) for the whole global batch and
then restricted to this process's rows, so an image's augmentation depends
only on (seed, global sample position): not on the process count, tf.data
parallelism or the step a run resumed from.
"""

import numpy as np

# "imagenet": random-resized crop, flip and colour jitter (imagenet_augment.py),
# for streamed images only.
AUGMENTATIONS = ("crop_flip", "crop", "flip", "none", "imagenet")


def normalization_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of images / 255, as float32 (C,) arrays."""
  images = np.asarray(images)
  c = images.shape[-1]
  total, total_sq, n = np.zeros(c), np.zeros(c), 0
  for chunk in np.array_split(
    images.reshape(-1, c), max(1, images.size // (1 << 24))
  ):
    x = (
      chunk.astype(np.float64) / 255.0
    )  # float64 chunks: exact enough, bounded memory
    total += x.sum(0)
    total_sq += (x * x).sum(0)
    n += len(x)
  mean = total / n
  std = np.sqrt(np.maximum(total_sq / n - mean * mean, 0.0))
  return mean.astype(np.float32), std.astype(np.float32)


def _draws(tf, seed, step, global_batch_size: int, pad: int, max_flip: int):
  """Crop offsets (B, 2) and flips (B,) of the whole global batch of `step`."""
  offset_key, flip_key = tf.unstack(
    tf.random.experimental.stateless_split(tf.stack([seed, step]), 2)
  )
  offset = tf.random.stateless_uniform(
    [global_batch_size, 2],
    offset_key,
    minval=0,
    maxval=2 * pad + 1,
    dtype=tf.int32,
  )
  flip = tf.random.stateless_uniform(
    [global_batch_size], flip_key, minval=0, maxval=max_flip, dtype=tf.int32
  )
  return offset, flip


def _settings(augment: str, pad: int) -> tuple[int, int]:
  """(pad, max_flip): 'crop' never mirrors (for digits, whose mirror image can be
  another class); 'flip' does not pad."""
  if augment not in AUGMENTATIONS or augment == "imagenet":
    raise ValueError(
      f"crop_flip does not do augment={augment!r}; use one of "
      "crop_flip, crop, flip, none."
    )
  return (pad if augment in ("crop_flip", "crop") else 0), (
    1 if augment == "crop" else 2
  )


def _window(tf, images, offset, flip, pad: int):
  """Zero (black) padding, then the crop window and the mirror as two batched gathers."""
  h, w = images.shape[1], images.shape[2]
  images = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
  ys = offset[:, :1] + tf.range(h)[None]
  xs = offset[:, 1:] + tf.where(
    flip[:, None] == 1, tf.range(w - 1, -1, -1), tf.range(w)
  )
  return tf.gather(
    tf.gather(images, ys, axis=1, batch_dims=1), xs, axis=2, batch_dims=1
  )


def crop_flip(
  tf,
  images,
  *,
  seed,
  step,
  rows,
  global_batch_size: int,
  augment: str,
  pad: int,
):
  """Augments one local batch of uint8 images (B_local, H, W, C).

  Args:
    tf: the TensorFlow module (imported by the caller with GPUs hidden).
    images: this process's rows of the global batch of `step`.
    seed, step: int64 scalar tensors keying the draws.
    rows: int tensor, positions of `images` within the global batch.
    global_batch_size: size of the global batch the draws are made for.
    augment: 'crop_flip', 'crop', 'flip' or 'none'.
    pad: zero padding on each side before the crop.
  """
  pad, max_flip = _settings(augment, pad)
  if augment == "none":
    return images
  offset, flip = _draws(tf, seed, step, global_batch_size, pad, max_flip)
  return _window(
    tf, images, tf.gather(offset, rows), tf.gather(flip, rows), pad
  )


def crop_flip_example(
  tf, image, *, seed, position, global_batch_size: int, augment: str, pad: int
):
  """`crop_flip` of one image (H, W, C) at global sample `position`.

  Draws the same numbers as the batched form does for row position % B of step
  position // B, so a streamed image is augmented exactly like the in-memory one.
  """
  pad, max_flip = _settings(augment, pad)
  if augment == "none":
    return image
  step, row = position // global_batch_size, position % global_batch_size
  offset, flip = _draws(tf, seed, step, global_batch_size, pad, max_flip)
  return _window(tf, image[None], offset[row][None], flip[row][None], pad)[0]
