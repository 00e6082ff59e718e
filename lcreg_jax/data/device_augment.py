"""The per-pixel end of the MiSLAS ImageNet augmentation, on the accelerator.

The host pipeline (`imagenet_augment`) reads, decodes, crops and resizes, and
ships uint8 [B, 224, 224, 3] crops; the flip, colour jitter and ImageNet
normalisation of the whole global batch then run here, jitted, with each
example's drawn parameters. On an accelerator they cost microseconds; on the
host they were a quarter of each image's CPU time, and the host now copies a
quarter of the bytes (uint8 instead of float32). Rounding the resized crop to
uint8 is also what torchvision does on PIL images, which MiSLAS uses.

Colour jitter is torchvision's (hue 0) on the 0..255 scale: brightness b·x,
contrast c·x + (1 - c)·mean(grey), saturation s·x + (1 - s)·grey (ITU-R 601
grey), applied in each example's drawn order and clipped to [0, 255] after
each step: the three share one form, f·x + (1 - f)·target, so each step is
a grey pass, a mean and one fused update of the batch.
"""

import jax
import jax.numpy as jnp

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def normalize(images: jax.Array) -> jax.Array:
  """uint8 (or 0..255 float) [..., 3] -> float32 (x/255 - mean) / std."""
  x = images.astype(jnp.float32)
  std = jnp.asarray(STD, jnp.float32)
  return x * (1.0 / (255.0 * std)) - jnp.asarray(MEAN, jnp.float32) / std


def _grey(x):
  # As a weighted sum, not a matmul: elementwise ops fuse with the update.
  w = GRAY_WEIGHTS
  return w[0] * x[..., 0] + w[1] * x[..., 1] + w[2] * x[..., 2]  # [B, H, W]


def color_jitter(
  x: jax.Array, factors: jax.Array, order: jax.Array
) -> jax.Array:
  """float32 [B, H, W, 3] in [0, 255]; factors [B, 3] (brightness, contrast,
  saturation), order [B, 3] a permutation of (0, 1, 2) per example."""
  for step in range(3):
    which = order[:, step]  # [B]
    f = jnp.take_along_axis(factors, which[:, None], 1)[:, 0]
    # All three are f·x + (1 - f)·target, clipped: target 0 (brightness;
    # f·x >= 0, so only the top clip acts), the image's mean grey (contrast)
    # or the pixel's grey (saturation). One formula with per-example
    # selectors is one fused pass, not three candidates.
    grey = _grey(x)  # [B, H, W]
    mean = (which == 1) * grey.mean((1, 2))  # [B]
    per_pixel = (which == 2).astype(x.dtype)  # [B]
    target = (mean[:, None, None] + per_pixel[:, None, None] * grey)[..., None]
    f = f[:, None, None, None]
    x = jnp.clip(f * x + (1.0 - f) * target, 0.0, 255.0)
  return x


def flip_jitter_normalize(
  images: jax.Array, flip: jax.Array, factors: jax.Array, order: jax.Array
) -> jax.Array:
  """The training view's per-pixel steps: uint8 crops [B, H, W, 3] ->
  float32, mirrored left-right where `flip` [B], jittered, normalised."""
  x = images.astype(jnp.float32)
  x = jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)
  return normalize(color_jitter(x, factors.astype(jnp.float32), order))
