"""ImageNet-scale augmentation of MiSLAS (torchvision's ImageNet recipe): TensorFlow ops on
the host, its per-pixel end in JAX on the accelerator.

Training: random-resized crop (area U(0.08, 1), log-uniform aspect in (3/4, 4/3), 10
attempts, then a centre crop) resized to 224, horizontal flip p = 1/2, colour jitter
(brightness, contrast, saturation 0.4; hue 0, in a uniformly random order, clipping to [0, 1]
after each) and ImageNet normalisation. Evaluation: shorter side to 256, centre crop 224,
normalisation.

Every random number of a training view comes from `train_params`, a NumPy function of (global
seed, global sample positions), vectorised over a batch of positions: a counter-based hash
(SplitMix64's finaliser chained over seed, position, draw index) mapped to uniforms, then to
torchvision's distributions. So an image's augmentation depends only on (seed, position): not
on the process count, tf.data parallelism, the batch it falls in or the step a run resumed
from. The host's image work (`train_crop`) runs per example in a tf.data map, given the
example's row of parameters: read, fused decode-and-crop of the window (whose acceptance rule,
which needs the image's size, is vectorised over the attempts), then PIL's bilinear resize
to uint8, as torchvision does to PIL images (and at about 60 % of the CPU time of TensorFlow's
antialiased resize). Flip, colour jitter and normalisation run on the accelerator over the
whole global batch (`device_augment`, called through `TrainAugment.finish` by the streaming
iterator): on the host they took a quarter of each image's CPU time, and uint8 batches are a
quarter of the bytes to copy. `TrainAugment` bundles the parts for
`streaming.make_train_iterator`; `train_image` is one view from (seed, position). The
functions receive the TensorFlow module from the caller, who imports it with GPUs hidden
(`pipeline.import_tf`).

Deviations from torchvision on PIL images, which MiSLAS uses: none in the crops (JPEG
decoding is bit-identical to PIL's, both libjpeg-turbo with the accurate IDCT, and the resize
is PIL's own), but colour jitter works in float with the ITU-R 601 grey (0.299, 0.587, 0.114),
as torchvision's tensor path does, where PIL's ImageEnhance rounds to
uint8 and rounds the contrast mean to an integer grey level. The random streams are our
hash's, not torch's, so the distributions match but not the individual draws.
"""

import math
from typing import NamedTuple

import numpy as np

from lcreg_jax.data import device_augment
from lcreg_jax.data.device_augment import GRAY_WEIGHTS, MEAN, STD  # noqa: F401

ATTEMPTS = 10
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
JITTER = (0.4, 0.4, 0.4)  # brightness, contrast, saturation
# Mixed into every hash, so that these draws never share a stream with other users of the
# same global seed.
_HASH_TAG = 0x1A6E7
# TF's default JPEG IDCT is libjpeg's fast integer one; PIL (so torchvision) uses the accurate
# one, at about the same speed with libjpeg-turbo, and then both decode bit-identically.
_DCT_METHOD = "INTEGER_ACCURATE"
_JPEG_CROP_MARGIN = 4

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix(z):
  """SplitMix64's finaliser on uint64 arrays (a bijection with full avalanche)."""
  z = z ^ (z >> np.uint64(30))
  z = z * _M1
  z = z ^ (z >> np.uint64(27))
  z = z * _M2
  return z ^ (z >> np.uint64(31))


def uniforms(seed, positions, count):
  """float64 [n, count] i.i.d. U[0, 1): a pure function of (seed, position, draw index).

  Each number is the SplitMix64 finaliser chained over (tag + seed, position, index), its 53
  top bits scaled by 2^-53; no state, so any subset of positions gives the same rows.
  """
  positions = np.asarray(positions, np.int64).astype(np.uint64)
  with np.errstate(over="ignore"):
    key = _splitmix(np.uint64(_HASH_TAG) + np.uint64(seed % 2**64) * _GOLDEN)
    row = _splitmix(key ^ _splitmix(positions * _GOLDEN + _GOLDEN))
    index = np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN
    bits = _splitmix(row[:, None] ^ _splitmix(index)[None, :])
  return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _check_range(name, bounds):
  lo, hi = (float(b) for b in bounds)
  if not 0 < lo <= hi:
    raise ValueError(
      f"{name} must be (low, high) with 0 < low <= high; got {bounds}."
    )
  return lo, hi


def train_params(
  seed, positions, scale=SCALE, ratio=RATIO, attempts=ATTEMPTS, jitter=JITTER
):
  """All random parameters of the training views of `positions` under global `seed` (NumPy).

  Returns a dict of arrays with leading dimension n = len(positions):
    area: float64 [n, attempts], crop area fractions ~ U(scale);
    aspect: float64 [n, attempts], aspects w/h, log-uniform in `ratio`;
    offset: float64 [n, 2], U[0, 1) for the (y, x) offset of an accepted crop;
    flip: bool [n], mirror left-right, probability 1/2;
    factors: float32 [n, 3], (brightness, contrast, saturation) ~ U[max(0, 1 - j), 1 + j];
    order: int32 [n, 3], a uniform permutation of (0 brightness, 1 contrast, 2 saturation),
      the order they are applied in (argsort of i.i.d. uniforms).
  """
  s0, s1 = _check_range("scale", scale)
  r0, r1 = _check_range("ratio", ratio)
  if min(jitter) < 0:
    raise ValueError(f"jitter strengths must be >= 0; got {jitter}.")
  u = uniforms(seed, positions, 2 * attempts + 9)
  log_ratio = (
    math.log(r0) + (math.log(r1) - math.log(r0)) * u[:, attempts : 2 * attempts]
  )
  low = np.array([max(0.0, 1.0 - j) for j in jitter])
  high = np.array([1.0 + j for j in jitter])
  k = 2 * attempts
  return {
    "area": s0 + (s1 - s0) * u[:, :attempts],
    "aspect": np.exp(log_ratio),
    "offset": u[:, k : k + 2],
    "flip": u[:, k + 2] < 0.5,
    "factors": (low + (high - low) * u[:, k + 3 : k + 6]).astype(np.float32),
    "order": np.argsort(u[:, k + 6 : k + 9], axis=1, kind="stable").astype(
      np.int32
    ),
  }


CROP_KEYS = ("area", "aspect", "offset")


def crop_window(tf, image_shape_hw, area, aspect, offset, ratio=RATIO):
  """Random-resized-crop window (offset_y, offset_x, h, w), int32 scalars, of one image.

  torchvision's RandomResizedCrop.get_params given its draws (`train_params`' area, aspect
  and offset rows): the first attempt whose rounded (h, w) fits the image, at a uniform
  offset floor(u * (H - h + 1)); if none fits, the centre crop of the largest window whose
  aspect lies in `ratio`. All attempts are checked at once, which picks the same window as
  trying them one by one, without a while loop.

  Args:
    tf: the TensorFlow module.
    image_shape_hw: (H, W), ints or an int tensor.
    area, aspect: float64 [attempts] tensors or arrays.
    offset: float64 [2], U[0, 1) for the y and x offsets.
    ratio: the aspect range `aspect` was drawn from (for the fallback).
  """
  r0, r1 = _check_range("ratio", ratio)
  hw = tf.cast(image_shape_hw, tf.int32)
  height, width = hw[0], hw[1]
  h_f, w_f = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
  target_area = (h_f * w_f) * tf.cast(
    area, tf.float64
  )  # float64 like torchvision's floats
  aspect = tf.cast(aspect, tf.float64)
  # tf.round rounds half to even, as Python's round() in torchvision.
  ws = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
  hs = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
  fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
  first = tf.argmax(
    tf.cast(fits, tf.int32), output_type=tf.int32
  )  # 0 when none fits

  # Fallback: the whole image, trimmed to the nearest allowed aspect.
  in_ratio = w_f / h_f
  too_tall, too_wide = in_ratio < r0, in_ratio > r1
  fallback_w = tf.where(too_wide, tf.cast(tf.round(h_f * r1), tf.int32), width)
  fallback_h = tf.where(too_tall, tf.cast(tf.round(w_f / r0), tf.int32), height)

  accepted = tf.reduce_any(fits)
  h = tf.where(accepted, hs[first], fallback_h)
  w = tf.where(accepted, ws[first], fallback_w)
  room = tf.stack([height - h, width - w])
  random_yx = tf.minimum(
    tf.cast(
      tf.floor(tf.cast(offset, tf.float64) * tf.cast(room + 1, tf.float64)),
      tf.int32,
    ),
    room,
  )
  yx = tf.where(accepted, random_yx, room // 2)
  return yx[0], yx[1], h, w


def decode_crop(tf, encoded, params, ratio=RATIO):
  """Decodes the random-resized-crop window of one encoded image: (uint8 [h, w, 3], window).

  `params`: a dict with the image's `area`, `aspect` and `offset` rows (`train_params`);
  `window` is int32 [4] (offset_y, offset_x, h, w). JPEGs are decoded only inside the
  window, with the fused decode_and_crop_jpeg; other formats are decoded whole, then sliced.
  JPEGs are told by their magic bytes, not by a file name (ImageNet has PNGs named .JPEG);
  grey and CMYK JPEGs come out RGB. The result equals decoding the whole image and slicing.
  """

  def window_of(shape_hw):
    return tf.stack(
      crop_window(
        tf, shape_hw, params["area"], params["aspect"], params["offset"], ratio
      )
    )

  def jpeg():
    shape = tf.image.extract_jpeg_shape(encoded)
    window = window_of(shape[:2])
    # libjpeg crops at an iMCU boundary and upsamples subsampled chroma as if the crop's
    # edges were the image's (without interpolation at all when the crop is only a few
    # pixels wide), so the edge columns would differ from the full decode's; a few columns
    # of margin either side, sliced off after, make the crop exact.
    left = tf.minimum(window[1], _JPEG_CROP_MARGIN)
    right = tf.minimum(shape[1] - window[1] - window[3], _JPEG_CROP_MARGIN)
    wide = tf.stack(
      [window[0], window[1] - left, window[2], window[3] + left + right]
    )
    crop = tf.image.decode_and_crop_jpeg(
      encoded, wide, channels=3, dct_method=_DCT_METHOD
    )
    return crop[:, left : left + window[3]], window

  def other():
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    window = window_of(tf.shape(image)[:2])
    crop = tf.slice(
      image,
      tf.stack([window[0], window[1], 0]),
      tf.stack([window[2], window[3], 3]),
    )
    return crop, window

  crop, window = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
  crop.set_shape([None, None, 3])
  window.set_shape([4])
  return crop, window


def _decode(tf, encoded):
  """The whole image, uint8 [H, W, 3], JPEGs with PIL's (libjpeg's default) accurate IDCT."""
  return tf.cond(
    tf.io.is_jpeg(encoded),
    lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method=_DCT_METHOD),
    lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False),
  )


def _pil_resize(image, height, width):
  """uint8 [h, w, 3] -> uint8 [height, width, 3] with PIL's bilinear filter (a triangle
  filter widened by the scale when shrinking, fixed-point, rounded after each of its two
  passes): exactly what torchvision's Resize/RandomResizedCrop do to the PIL images MiSLAS
  trains on. PIL releases the GIL while it resamples, so tf.data threads run it in parallel;
  it costs about 60 % of TensorFlow's antialiased resize's CPU time on the 2-core VM."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  return np.asarray(
    Image.fromarray(image).resize(
      (int(width), int(height)), Image.Resampling.BILINEAR
    )
  )


def resize_like_pil(tf, image, size_hw):
  """`_pil_resize` inside a TF graph (a tf.data map): uint8 [h, w, 3] -> uint8 size_hw."""
  out = tf.numpy_function(
    _pil_resize, [image, size_hw[0], size_hw[1]], tf.uint8, stateful=False
  )
  out.set_shape([None, None, 3])
  return out


def train_crop(tf, encoded, params, size=224, ratio=RATIO):
  """The host part of the MiSLAS training view: RandomResizedCrop(size) of an encoded image
  given its `train_params` row, uint8 [size, size, 3], as torchvision computes it on PIL
  images (the window decoded, then PIL's bilinear resize). Flip, jitter and normalisation
  follow on the accelerator (`device_augment.flip_jitter_normalize`)."""
  crop, _ = decode_crop(tf, encoded, params, ratio)
  image = resize_like_pil(tf, crop, (size, size))
  image.set_shape([size, size, 3])
  return image


class TrainAugment(NamedTuple):
  """The MiSLAS training view as a `streaming.DrawnAugment`: parameters drawn in NumPy
  per batch of positions, the crop per example on the host, flip, jitter and normalisation
  per batch on the accelerator."""

  size: int = 224
  # The parameters `finish` needs, shipped with each batch.
  device_keys = ("flip", "factors", "order")

  def params(self, seed, positions):
    """NumPy: the random parameters of `positions` (`train_params`)."""
    return train_params(seed, positions)

  def example(self, tf, encoded, params):
    """Per example, on the host: the uint8 crop [size, size, 3] (`train_crop`)."""
    return train_crop(tf, encoded, params, self.size)

  def finish(self, images, params):
    """Per global batch, jitted on the accelerator: uint8 crops -> float32 views."""
    return device_augment.flip_jitter_normalize(
      images, params["flip"], params["factors"], params["order"]
    )


def train_image(tf, encoded, seed, position, size=224):
  """MiSLAS training view of one encoded image at global `seed` and sample `position`
  (Python ints): NumPy float32 [size, size, 3], normalised; the same as the streaming path's."""
  params = train_params(seed, [position])
  crop = train_crop(
    tf, encoded, {k: tf.constant(v[0]) for k, v in params.items()}, size
  )
  return np.asarray(
    TrainAugment(size).finish(
      crop.numpy()[None], {k: params[k] for k in TrainAugment.device_keys}
    )
  )[0]


def eval_crop(tf, encoded, resize=256, size=224):
  """MiSLAS evaluation view before normalisation: shorter side to `resize`, centre crop
  `size`, uint8 [size, size, 3] (normalised on the accelerator, `eval_finish`).

  torchvision's Resize(resize) keeps the aspect with the longer side int(resize*long/short)
  (= the integer floor division below, exactly, for any real image size) and CenterCrop's
  offsets are int(round((H - size) / 2)), rounding halves to even.
  """
  if resize < size:
    raise ValueError(
      f"resize={resize} must be >= size={size}: the centre crop would pad."
    )
  image = _decode(tf, encoded)
  hw = tf.shape(image, out_type=tf.int64)[:2]
  short, long = tf.reduce_min(hw), tf.reduce_max(hw)
  new_long = resize * long // short
  new_hw = tf.where(
    hw[0] <= hw[1], tf.stack([resize, new_long]), tf.stack([new_long, resize])
  )
  new_hw = tf.cast(new_hw, tf.int32)
  image = resize_like_pil(tf, image, new_hw)
  offsets = tf.cast(
    tf.round(tf.cast(new_hw - size, tf.float64) / 2.0), tf.int32
  )
  image = tf.slice(
    image, tf.stack([offsets[0], offsets[1], 0]), [size, size, 3]
  )
  image.set_shape([size, size, 3])
  return image


# Per global evaluation batch, on the accelerator: uint8 crops -> normalised float32.
eval_finish = device_augment.normalize
