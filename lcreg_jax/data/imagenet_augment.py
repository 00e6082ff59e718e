"""ImageNet-scale augmentation of MiSLAS (torchvision's ImageNet recipe) as TensorFlow ops.

Training: random-resized crop (area U(0.08, 1), log-uniform aspect in (3/4, 4/3), 10
attempts, then a centre crop) resized to 224, horizontal flip p = 1/2, colour jitter
(brightness, contrast, saturation 0.4; hue 0) and ImageNet normalisation. Evaluation: shorter
side to 256, centre crop 224, normalisation.

Every random draw is a stateless function of a per-example seed (an int32 or int64 [2] tensor,
see `example_seed`), so an image's augmentation depends only on (global seed, global sample
position): not on the process count, tf.data parallelism or the step a run resumed from. The
functions work per example on encoded bytes, inside `tf.data.Dataset.map` (graph mode) or
eagerly; they receive the TensorFlow module from the caller, who imports it with GPUs hidden
(`pipeline.import_tf`).

Deviations from torchvision on PIL images, which MiSLAS uses: JPEG decoding is bit-identical
to PIL's (both libjpeg-turbo with the accurate IDCT), but resizing is TensorFlow's bilinear
with antialias, PIL's triangle filter kept in float where PIL rounds to uint8 after each of
its two passes, and colour jitter works in float on [0, 1] with the ITU-R 601 grey
(0.299, 0.587, 0.114), as torchvision's tensor path does, where PIL's ImageEnhance rounds to
uint8 and rounds the contrast mean to an integer grey level. The random streams are TF's
Philox, not torch's, so the distributions match but not the individual draws.
"""

import math

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
GRAY_WEIGHTS = (0.299, 0.587, 0.114)
# Folded into the global seed by `example_seed`, so that these draws never share a key with
# other users of the same global seed (e.g. augment.crop_flip keys on [seed, step]).
_EXAMPLE_SEED_TAG = 0x1A6E7
# TF's default JPEG IDCT is libjpeg's fast integer one; PIL (so torchvision) uses the accurate
# one, at about the same speed with libjpeg-turbo, and then both decode bit-identically.
_DCT_METHOD = "INTEGER_ACCURATE"
_JPEG_CROP_MARGIN = 4


def example_seed(tf, seed, position):
  """The per-example seed, int64 [2], for global seed `seed` and global sample `position`.

  Any [2] integer tensor works as a seed for the functions below; this is the recommended
  one: a pure function of (seed, position), with the position kept verbatim so that nearby
  positions get unrelated Philox streams (TF hashes the whole [2] seed into key and counter).
  """
  base = tf.stack([tf.cast(seed, tf.int64), tf.constant(_EXAMPLE_SEED_TAG, tf.int64)])
  return tf.random.experimental.stateless_fold_in(base, tf.cast(position, tf.int64))


def _check_range(name, bounds):
  lo, hi = (float(b) for b in bounds)
  if not 0 < lo <= hi:
    raise ValueError(f"{name} must be (low, high) with 0 < low <= high; got {bounds}.")
  return lo, hi


def crop_attempts(tf, seed, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts=10):
  """The raw draws of `crop_window`'s attempts: (area fraction, aspect w/h), float64 [attempts].

  Exposed so that tests can replay the acceptance rule; `crop_window` uses exactly these.
  """
  s0, s1 = _check_range("scale", scale)
  r0, r1 = _check_range("ratio", ratio)
  attempt_seed = tf.random.experimental.stateless_split(seed, 2)[0]
  u = tf.random.stateless_uniform([2, attempts], attempt_seed, dtype=tf.float64)
  area_fraction = s0 + (s1 - s0) * u[0]
  log_ratio = math.log(r0) + (math.log(r1) - math.log(r0)) * u[1]
  return area_fraction, tf.exp(log_ratio)


def crop_window(tf, image_shape_hw, seed, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                attempts=10):
  """Random-resized-crop window (offset_y, offset_x, h, w), int32 scalars.

  torchvision's RandomResizedCrop.get_params: the first of `attempts` draws whose rounded
  (h, w) fits the image, at a uniform offset; if none fits, the centre crop of the largest
  window whose aspect lies in `ratio`. The attempts are drawn at once and the first accepted
  one picked, which gives the same window as drawing them one by one, without a while loop.

  Args:
    tf: the TensorFlow module.
    image_shape_hw: (H, W), ints or an int tensor.
    seed: int32 or int64 [2] tensor.
    scale: range of the crop area as a fraction of the image area.
    ratio: range of the aspect w/h, sampled log-uniformly.
    attempts: draws before the centre-crop fallback.
  """
  r0, r1 = _check_range("ratio", ratio)
  hw = tf.cast(image_shape_hw, tf.int32)
  height, width = hw[0], hw[1]
  h_f, w_f = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
  area_fraction, aspect = crop_attempts(tf, seed, scale, ratio, attempts)
  target_area = (h_f * w_f) * area_fraction  # in float64 like torchvision's Python floats
  # tf.round rounds half to even, as Python's round() in torchvision.
  ws = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
  hs = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
  fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)  # 0 when none fits

  # Fallback: the whole image, trimmed to the nearest allowed aspect.
  in_ratio = w_f / h_f
  too_tall, too_wide = in_ratio < r0, in_ratio > r1
  fallback_w = tf.where(too_wide, tf.cast(tf.round(h_f * r1), tf.int32), width)
  fallback_h = tf.where(too_tall, tf.cast(tf.round(w_f / r0), tf.int32), height)

  accepted = tf.reduce_any(fits)
  h = tf.where(accepted, hs[first], fallback_h)
  w = tf.where(accepted, ws[first], fallback_w)
  offset_seed = tf.random.experimental.stateless_split(seed, 2)[1]  # [0]: crop_attempts'
  y_seed, x_seed = tf.unstack(tf.random.experimental.stateless_split(offset_seed, 2))
  random_y = tf.random.stateless_uniform([], y_seed, minval=0, maxval=height - h + 1,
                                         dtype=tf.int32)
  random_x = tf.random.stateless_uniform([], x_seed, minval=0, maxval=width - w + 1,
                                         dtype=tf.int32)
  offset_y = tf.where(accepted, random_y, (height - h) // 2)
  offset_x = tf.where(accepted, random_x, (width - w) // 2)
  return offset_y, offset_x, h, w


def decode_crop(tf, encoded, seed, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """Decodes the random-resized-crop window of one encoded image: (uint8 [h, w, 3], window).

  `window` is int32 [4] (offset_y, offset_x, h, w). JPEGs are decoded only inside the
  window, with the fused decode_and_crop_jpeg; other formats are decoded whole, then sliced.
  JPEGs are told by their magic bytes, not by a file name (ImageNet has PNGs named .JPEG);
  grey and CMYK JPEGs come out RGB. The result equals decoding the whole image and slicing.
  """

  def jpeg():
    shape = tf.image.extract_jpeg_shape(encoded)
    window = tf.stack(crop_window(tf, shape[:2], seed, scale, ratio))
    # libjpeg crops at an iMCU boundary and upsamples subsampled chroma as if the crop's
    # edges were the image's (without interpolation at all when the crop is only a few
    # pixels wide), so the edge columns would differ from the full decode's; a few columns
    # of margin either side, sliced off after, make the crop exact.
    left = tf.minimum(window[1], _JPEG_CROP_MARGIN)
    right = tf.minimum(shape[1] - window[1] - window[3], _JPEG_CROP_MARGIN)
    wide = tf.stack([window[0], window[1] - left, window[2], window[3] + left + right])
    crop = tf.image.decode_and_crop_jpeg(encoded, wide, channels=3, dct_method=_DCT_METHOD)
    return crop[:, left:left + window[3]], window

  def other():
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    window = tf.stack(crop_window(tf, tf.shape(image)[:2], seed, scale, ratio))
    crop = tf.slice(image, tf.stack([window[0], window[1], 0]),
                    tf.stack([window[2], window[3], 3]))
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
      lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))


def _resize(tf, image, size_hw):
  """uint8 image -> float32 in [0, 1], bilinear with antialias (PIL's filter when shrinking)."""
  image = tf.image.resize(image, size_hw, method="bilinear", antialias=True) / 255.0
  return tf.clip_by_value(image, 0.0, 1.0)


def decode_random_resized_crop(tf, encoded, seed, size=224, scale=(0.08, 1.0),
                               ratio=(3 / 4, 4 / 3)):
  """RandomResizedCrop(size) of an encoded image: float32 [size, size, 3] in [0, 1]."""
  crop, _ = decode_crop(tf, encoded, seed, scale, ratio)
  image = _resize(tf, crop, [size, size])
  image.set_shape([size, size, 3])
  return image


def random_flip(tf, image, seed):
  """Mirrors image [H, W, C] left-right with probability 1/2."""
  flip = tf.random.stateless_uniform([], seed) < 0.5
  # A cond, not tf.where: per-image ops in a tf.data map cost ~0.1 ms each on 224x224x3.
  return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: tf.identity(image))


def jitter_params(tf, seed, brightness=0.4, contrast=0.4, saturation=0.4):
  """`color_jitter`'s draws: (factors float32 [3] = (b, c, s), order int32 [3]).

  factor ~ U[max(0, 1 - j), 1 + j] for strength j, as torchvision; `order` is a uniform
  permutation of (0 brightness, 1 contrast, 2 saturation), the order they are applied in.
  """
  strengths = (brightness, contrast, saturation)
  if min(strengths) < 0:
    raise ValueError(f"jitter strengths must be >= 0; got {strengths}.")
  factor_seed, order_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  low = tf.constant([max(0.0, 1.0 - j) for j in strengths], tf.float32)
  high = tf.constant([1.0 + j for j in strengths], tf.float32)
  factors = low + (high - low) * tf.random.stateless_uniform([3], factor_seed)
  # argsort of i.i.d. uniforms is a uniform permutation (ties have probability ~0).
  order = tf.argsort(tf.random.stateless_uniform([3], order_seed), stable=True)
  return factors, tf.cast(order, tf.int32)


def color_jitter(tf, image, seed, brightness=0.4, contrast=0.4, saturation=0.4):
  """torchvision's ColorJitter (hue 0) on float32 [H, W, 3] in [0, 1], clipping after each step.

  brightness: b*x; contrast: c*x + (1 - c)*mean(grey); saturation: s*x + (1 - s)*grey, in
  the order `jitter_params` draws. Each step is a switch over the three, so that an image
  pays only for the step it takes: in a tf.data map each whole-image op costs ~0.1 ms.
  """
  factors, order = jitter_params(tf, seed, brightness, contrast, saturation)
  factors = tf.cast(factors, image.dtype)
  weights = tf.constant(GRAY_WEIGHTS, image.dtype)

  def brightness_fn(x, f):
    return tf.minimum(f * x, 1.0)  # x, f >= 0

  def contrast_fn(x, f):
    # mean(grey) as the grey of the per-channel means: one pass over the image.
    mean_grey = tf.reduce_sum(tf.reduce_mean(x, axis=[0, 1]) * weights)
    return tf.clip_by_value(f * x + (1.0 - f) * mean_grey, 0.0, 1.0)

  def saturation_fn(x, f):
    # f*x + (1 - f)*grey as one 3x3 colour matrix: TF's kernels that broadcast the grey
    # channel (or any [3] vector) over the image are several times slower than a matmul.
    matrix = f * tf.eye(3, dtype=x.dtype) + (1.0 - f) * tf.tile(weights[:, None], [1, 3])
    return tf.clip_by_value(tf.reshape(tf.reshape(x, [-1, 3]) @ matrix, tf.shape(x)), 0.0,
                            1.0)

  fns = (brightness_fn, contrast_fn, saturation_fn)
  for step in range(3):
    which = order[step]
    image = tf.switch_case(which, [lambda fn=fn, x=image, f=factors[which]: fn(x, f)
                                   for fn in fns])
  return image


def normalize(tf, image):
  """(image - ImageNet mean) / ImageNet std, per channel, for float32 [..., W, 3] in [0, 1].

  Computed as x * (1/std) + (-mean/std) on rows of W*3 values: broadcasting a whole row is
  vectorised in TF's CPU kernels, broadcasting a [3] vector is several times slower.
  """
  width = tf.shape(image)[-2]
  scale = tf.tile(1.0 / tf.constant(STD, tf.float32), [width])
  shift = tf.tile(-tf.constant(MEAN, tf.float32) / tf.constant(STD, tf.float32), [width])
  rows = tf.reshape(image, tf.stack([-1, width * 3]))
  return tf.reshape(rows * scale + shift, tf.shape(image))


def train_image(tf, encoded, seed, size=224):
  """MiSLAS training view of one encoded image: float32 [size, size, 3], normalised.

  Random-resized crop, flip, colour jitter, normalise, with independent sub-seeds split off
  `seed` (int32 or int64 [2], e.g. `example_seed(tf, global_seed, global_position)`).
  """
  crop_seed, flip_seed, jitter_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3))
  image = decode_random_resized_crop(tf, encoded, crop_seed, size)
  image = random_flip(tf, image, flip_seed)
  image = color_jitter(tf, image, jitter_seed)
  return normalize(tf, image)


def eval_image(tf, encoded, resize=256, size=224):
  """MiSLAS evaluation view: shorter side to `resize`, centre crop `size`, normalise.

  torchvision's Resize(resize) keeps the aspect with the longer side int(resize*long/short)
  (= the integer floor division below, exactly, for any real image size) and CenterCrop's
  offsets are int(round((H - size) / 2)), rounding halves to even.
  """
  if resize < size:
    raise ValueError(f"resize={resize} must be >= size={size}: the centre crop would pad.")
  image = _decode(tf, encoded)
  hw = tf.shape(image, out_type=tf.int64)[:2]
  short, long = tf.reduce_min(hw), tf.reduce_max(hw)
  new_long = resize * long // short
  new_hw = tf.where(hw[0] <= hw[1], tf.stack([resize, new_long]), tf.stack([new_long, resize]))
  new_hw = tf.cast(new_hw, tf.int32)
  image = _resize(tf, image, new_hw)
  offsets = tf.cast(tf.round(tf.cast(new_hw - size, tf.float64) / 2.0), tf.int32)
  image = tf.slice(image, tf.stack([offsets[0], offsets[1], 0]), [size, size, 3])
  image.set_shape([size, size, 3])
  return normalize(tf, image)
