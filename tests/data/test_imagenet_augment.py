"""ImageNet-scale augmentation: the counter-based draws (uniform, independent, pure
functions of (seed, position)) and their mapping to torchvision's distributions, crop windows
against a NumPy transcription of torchvision's RandomResizedCrop.get_params, crops against the
full decode, resizing against a NumPy triangle-filter resampler, colour jitter against a NumPy
reference (on the accelerator's side, `device_augment`), flip rate, determinism, and the formats an ImageNet folder holds (JPEG in 4:2:0 /
4:4:4 / progressive / grey / CMYK, PNG).

Pillow only writes the test images; every reference is computed here with NumPy or with
TensorFlow's plain full-image decoder. Most checks run inside tf.data maps, i.e. in graph
mode, as the input pipeline will.
"""

import io
import math
import os
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from lcreg_jax.data import device_augment
from lcreg_jax.data import imagenet_augment as ia
from lcreg_jax.data import pipeline

tf = pipeline.import_tf()

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
RATIO = (3 / 4, 4 / 3)


def _textured(h, w, seed=0):
  """A smooth colour pattern plus noise: JPEG-coded with real chroma detail."""
  y, x = np.mgrid[:h, :w]
  image = np.stack(
    [127 + 110 * np.sin(x / 9 + c) * np.cos(y / 13 - 2 * c) for c in range(3)],
    -1,
  )
  image += np.random.default_rng(seed).normal(0, 20, (h, w, 3))
  return np.clip(image, 0, 255).astype(np.uint8)


def _encode(array, fmt="JPEG", mode=None, **kwargs):
  image = Image.fromarray(array)
  if mode:
    image = image.convert(mode)
  buf = io.BytesIO()
  image.save(buf, fmt, **kwargs)
  return buf.getvalue()


def _params(n, seed=5, start=0, **kwargs):
  """train_params of positions start..start+n-1 as a dict of NumPy arrays."""
  return ia.train_params(seed, np.arange(start, start + n), **kwargs)


def _crop_rows(params):
  return tuple(params[k] for k in ia.CROP_KEYS)


def _map_batched(fn, *tensors):
  """fn over the rows of `tensors`, in a tf.data map (graph mode), as NumPy, in order."""
  n = len(tf.nest.flatten(tensors)[0])
  ds = (
    tf.data.Dataset.from_tensor_slices(tensors)
    .map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    .batch(n)
  )
  return next(iter(ds.as_numpy_iterator()))


def _map_each(fn, *tensors):
  """As _map_batched for outputs of varying shape: a list of per-row results."""
  ds = tf.data.Dataset.from_tensor_slices(tensors).map(fn)
  return list(ds.as_numpy_iterator())


def _replay(shape_hw, area_fraction, aspect, ratio=RATIO):
  """torchvision's get_params given the attempts' draws: (h, w, accepted), rows of draws."""
  height, width = shape_hw
  target = (height * width) * area_fraction
  ws = np.round(np.sqrt(target * aspect)).astype(
    np.int64
  )  # half to even, as Python's round
  hs = np.round(np.sqrt(target / aspect)).astype(np.int64)
  fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
  first = fits.argmax(1)
  rows = np.arange(len(fits))
  h, w = hs[rows, first], ws[rows, first]
  fb_h, fb_w = _fallback(shape_hw, ratio)[2:]
  accepted = fits.any(1)
  return np.where(accepted, h, fb_h), np.where(accepted, w, fb_w), accepted


def _fallback(shape_hw, ratio=RATIO):
  """torchvision's centre-crop fallback, transcribed line by line."""
  height, width = shape_hw
  in_ratio = float(width) / float(height)
  if in_ratio < min(ratio):
    w = width
    h = int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    h = height
    w = int(round(h * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def _windows(shape_hw, n, **kwargs):
  params = _params(n, **kwargs)

  def fn(area, aspect, offset):
    return tf.stack(
      ia.crop_window(tf, tf.constant(shape_hw), area, aspect, offset)
    )

  return _map_batched(fn, *_crop_rows(params)), params["area"], params["aspect"]


@pytest.mark.parametrize(
  "shape_hw", [(500, 375), (375, 500), (100, 400), (50, 50)]
)
def test_crop_window_replays_torchvision_and_stays_in_range(shape_hw):
  height, width = shape_hw
  windows, frac, aspect = _windows(shape_hw, 2000)
  oy, ox, h, w = windows.T
  assert windows.dtype == np.int32
  exp_h, exp_w, accepted = _replay(shape_hw, frac, aspect)
  np.testing.assert_array_equal(h, exp_h)
  np.testing.assert_array_equal(w, exp_w)
  fb = _fallback(shape_hw)
  for i in np.nonzero(~accepted)[0]:
    assert tuple(windows[i]) == fb
  # The draws: area fraction U(0.08, 1), log-aspect U(log 3/4, log 4/3).
  assert (
    frac.min() >= 0.08 and frac.max() < 1.0 and abs(frac.mean() - 0.54) < 0.01
  )
  log_r = np.log(aspect)
  assert (
    log_r.min() >= math.log(0.75) - 1e-12
    and log_r.max() <= math.log(4 / 3) + 1e-12
  )
  assert (
    abs(log_r.mean()) < 0.006
    and abs(log_r.std() - 2 * math.log(4 / 3) / math.sqrt(12)) < 0.005
  )
  # Windows lie in the image, and area and aspect in their ranges up to the rounding of h, w:
  # w = round(sqrt(A a)), h = round(sqrt(A / a)) with A the target area, a the aspect.
  assert (oy >= 0).all() and (ox >= 0).all() and (h > 0).all() and (w > 0).all()
  assert (oy + h <= height).all() and (ox + w <= width).all()
  assert ((w + 0.5) * (h + 0.5) >= 0.08 * height * width).all()
  assert ((w - 0.5) * (h - 0.5) <= height * width).all()
  assert ((w + 0.5) / (h - 0.5) >= 0.75).all() and (
    (w - 0.5) / (h + 0.5) <= 4 / 3
  ).all()
  # Offsets of accepted crops uniform over the valid range.
  acc = accepted & (h < height) & (w < width)
  assert acc.sum() > 1000
  for off, size, full in ((oy, h, height), (ox, w, width)):
    u = (off[acc] + 0.5) / (full - size[acc] + 1)
    assert abs(u.mean() - 0.5) < 0.03 and u.min() < 0.1 and u.max() > 0.9
  # The final crops against a NumPy simulation of get_params with its own random numbers.
  rng = np.random.default_rng(0)
  sim_frac = rng.uniform(0.08, 1.0, (50000, 10))
  sim_aspect = np.exp(rng.uniform(math.log(0.75), math.log(4 / 3), (50000, 10)))
  sim_h, sim_w, _ = _replay(shape_hw, sim_frac, sim_aspect)
  area, sim_area = h * w / (height * width), sim_h * sim_w / (height * width)
  assert abs(np.log(w / h).mean() - np.log(sim_w / sim_h).mean()) < 0.012
  q = np.linspace(0.1, 0.9, 9)
  np.testing.assert_allclose(
    np.quantile(area, q), np.quantile(sim_area, q), atol=0.04
  )
  if shape_hw == (
    50,
    50,
  ):  # symmetric: log-aspect centred, areas over the whole range
    assert abs(np.log(w / h).mean()) < 0.012
    assert (area < 0.2).mean() > 0.1 and (area > 0.8).mean() > 0.05


@pytest.mark.parametrize(
  "shape_hw, kwargs",
  [
    ((1000, 10), {}),  # too tall for any attempt: w = W, h = round(W / (3/4))
    ((10, 1000), {}),  # too wide: h = H, w = round(H * 4/3)
    ((999, 11), {}),  # odd leftovers: (H - h) // 2 rounds down
    (
      (30, 40),
      {"scale": (1.5, 2.0)},
    ),  # larger than the image; aspect exactly 4/3: all of it
  ],
)
def test_crop_window_fallback_is_torchvision_centre_crop(shape_hw, kwargs):
  windows, frac, aspect = _windows(shape_hw, 200, **kwargs)
  assert not _replay(shape_hw, frac, aspect)[
    2
  ].any()  # no attempt fits, for any seed
  expected = _fallback(shape_hw)
  assert expected != (0, 0) + shape_hw or kwargs  # the trimmed cases do trim
  np.testing.assert_array_equal(windows, np.tile(expected, (200, 1)))


def test_draws_reject_bad_ranges():
  with pytest.raises(ValueError, match="scale"):
    ia.train_params(0, [0], scale=(0.5, 0.1))
  with pytest.raises(ValueError, match="ratio"):
    ia.train_params(0, [0], ratio=(0.0, 1.0))
  with pytest.raises(ValueError, match="jitter"):
    ia.train_params(0, [0], jitter=(0.4, -0.1, 0.4))
  with pytest.raises(ValueError, match="ratio"):
    ia.crop_window(tf, (10, 10), [0.5], [1.0], [0.5, 0.5], ratio=(0.0, 1.0))


def _ks_uniform(u):
  """Kolmogorov-Smirnov distance of samples u to U[0, 1)."""
  u = np.sort(u)
  n = len(u)
  return max((np.arange(1, n + 1) / n - u).max(), (u - np.arange(n) / n).max())


def test_uniforms_are_uniform_independent_and_pure():
  n = 20000
  u = ia.uniforms(7, np.arange(n), 29)
  assert u.shape == (n, 29) and u.dtype == np.float64
  assert u.min() >= 0 and u.max() < 1
  # Each draw index is U[0, 1): KS distance below the 0.1 % critical value 1.95 / sqrt(n).
  ks = [_ks_uniform(u[:, j]) for j in range(29)]
  assert max(ks) < 1.95 / math.sqrt(n), ks
  # A broken mapping (e.g. only the low bits, or squared) fails the same check.
  assert _ks_uniform(u[:, 0] ** 2) > 1.95 / math.sqrt(n)
  # No correlation between draw indices, nor between neighbouring positions (4.5 s.e.).
  corr = np.corrcoef(u.T)
  assert np.abs(corr - np.eye(29)).max() < 4.5 / math.sqrt(n)
  assert abs(np.corrcoef(u[:-1, 0], u[1:, 0])[0, 1]) < 4.5 / math.sqrt(n)
  # Pairs of indices jointly uniform: a 10 x 10 chi-square over the unit square.
  counts = np.histogram2d(u[:, 0], u[:, 1], bins=10, range=[[0, 1], [0, 1]])[0]
  chi2 = ((counts - n / 100) ** 2 / (n / 100)).sum()
  assert chi2 < 160  # 99 degrees of freedom: the 0.1 % critical value is ~149
  # Pure: any subset of positions, in any order, gives the same rows; seeds differ.
  pick = np.array([19999, 3, 512, 3])
  np.testing.assert_array_equal(ia.uniforms(7, pick, 29), u[pick])
  np.testing.assert_array_equal(ia.uniforms(7, pick, 5), u[pick, :5])
  other = ia.uniforms(8, np.arange(n), 29)
  assert (other != u).mean() > 0.999
  assert abs(np.corrcoef(other[:, 0], u[:, 0])[0, 1]) < 4.5 / math.sqrt(n)
  # Large positions and seeds (int64 range) work and stay distinct.
  big = ia.uniforms(2**40, np.array([2**62, 2**62 + 1, 0]), 3)
  assert len(np.unique(big)) == 9


def test_train_params_follow_torchvision_distributions():
  n = 20000
  p = _params(n, seed=11)
  crit = 1.95 / math.sqrt(n)
  # Area U(0.08, 1), log-aspect U(log 3/4, log 4/3), offsets U[0, 1), all attempts alike.
  for j in range(ia.ATTEMPTS):
    assert _ks_uniform((p["area"][:, j] - 0.08) / 0.92) < crit
    log_r = np.log(p["aspect"][:, j])
    assert (
      _ks_uniform((log_r - math.log(0.75)) / (math.log(4 / 3) - math.log(0.75)))
      < crit
    )
  assert (
    _ks_uniform(p["offset"][:, 0]) < crit
    and _ks_uniform(p["offset"][:, 1]) < crit
  )
  # Flip: Bernoulli 1/2.
  assert p["flip"].dtype == bool and abs(
    p["flip"].mean() - 0.5
  ) < 4.5 * 0.5 / math.sqrt(n)
  # Factors U[0.6, 1.4] each.
  assert p["factors"].dtype == np.float32
  for j in range(3):
    assert _ks_uniform((p["factors"][:, j] - 0.6) / 0.8) < crit
  # Order: every permutation of (0, 1, 2), each with frequency 1/6 (chi-square, 5 d.o.f.).
  assert (
    p["order"].dtype == np.int32 and (np.sort(p["order"], 1) == [0, 1, 2]).all()
  )
  perms, counts = np.unique(p["order"], axis=0, return_counts=True)
  assert len(perms) == 6
  assert ((counts - n / 6) ** 2 / (n / 6)).sum() < 20.5  # 0.1 % critical value
  # Other ranges map the same uniforms; a jitter strength above 1 starts its range at 0.
  q = _params(
    n, seed=11, scale=(0.5, 0.6), ratio=(1.0, 2.0), jitter=(1.5, 0.0, 0.2)
  )
  np.testing.assert_allclose(
    (q["area"] - 0.5) / 0.1, (p["area"] - 0.08) / 0.92, atol=1e-9
  )
  assert q["aspect"].min() >= 1.0 and q["aspect"].max() <= 2.0
  assert q["factors"][:, 0].min() >= 0 and q["factors"][:, 0].max() <= 2.5
  assert q["factors"][:, 0].min() < 0.01 and (q["factors"][:, 1] == 1).all()


JPEGS = {
  "420": dict(quality=90),
  "444": dict(quality=95, subsampling=0),
  "422_progressive": dict(quality=80, subsampling=1, progressive=True),
  "grey": dict(mode="L", quality=90),
  "cmyk": dict(mode="CMYK", quality=90),
}


@pytest.mark.parametrize(
  "shape_hw, scale, names",
  [
    ((375, 500), (0.08, 1.0), list(JPEGS)),  # typical crops
    # Crops 1-3 pixels wide, and 1-2 pixels wide often at the left edge, where chroma
    # upsampling in a cropped decode differs most; with and without chroma subsampling.
    ((61, 47), (0.0005, 0.003), ["420", "422_progressive", "444"]),
    ((61, 8), (0.001, 0.005), ["420", "422_progressive", "444"]),
  ],
)
def test_decode_crop_equals_full_decode_sliced(shape_hw, scale, names):
  height, width = shape_hw
  encoded = []
  for name in names:
    kwargs = dict(JPEGS[name])
    encoded.append(
      _encode(_textured(height, width), mode=kwargs.pop("mode", None), **kwargs)
    )
  n = 40  # seeds per image, in one pipeline for all images

  def crop_and_window(data, area, aspect, offset):
    params = dict(area=area, aspect=aspect, offset=offset)
    crop, window = ia.decode_crop(tf, data, params)
    return (
      crop,
      window,
      tf.stack(ia.crop_window(tf, (height, width), area, aspect, offset)),
    )

  results = _map_each(
    crop_and_window,
    tf.constant([e for e in encoded for _ in range(n)]),
    *_crop_rows(_params(n * len(names), scale=scale)),
  )
  for k, name in enumerate(names):
    full = tf.io.decode_jpeg(
      encoded[k], channels=3, dct_method="INTEGER_ACCURATE"
    ).numpy()
    if name == "grey":
      assert (full[..., 0] == full[..., 1]).all() and (
        full[..., 0] == full[..., 2]
      ).all()
    edges = 0
    for crop, window, expected_window in results[k * n : (k + 1) * n]:
      np.testing.assert_array_equal(window, expected_window)
      oy, ox, h, w = window
      assert crop.dtype == np.uint8 and crop.shape == (h, w, 3)
      np.testing.assert_array_equal(
        crop, full[oy : oy + h, ox : ox + w], err_msg=name
      )
      edges += 0 < ox and ox + w < width
    assert (
      edges >= 10
    )  # crops with both edges inside the image, where libjpeg's would differ
  assert len({tuple(r[1]) for r in results[:n]}) > 30


def _resize_matrix(n_in, n_out):
  """Rows of weights of a triangle-filter resample (bilinear; widened by the scale when
  shrinking, i.e. antialiased, as PIL), pixel centres at i + 1/2, normalised in the image."""
  scale = n_in / n_out
  support = max(scale, 1.0)
  centres = (np.arange(n_out) + 0.5) * scale
  weights = np.maximum(
    0.0,
    1.0 - np.abs((np.arange(n_in)[None] + 0.5 - centres[:, None]) / support),
  )
  return weights / weights.sum(1, keepdims=True)


def _resize(image, h, w):
  image = image.astype(np.float64)
  return np.einsum(
    "ij,jkc,lk->ilc",
    _resize_matrix(image.shape[0], h),
    image,
    _resize_matrix(image.shape[1], w),
    optimize=True,
  )


def _crop_params_ds(n, **kwargs):
  return dict(zip(ia.CROP_KEYS, _crop_rows(_params(n, **kwargs))))


def test_train_crop_is_the_crop_resized():
  encoded = _encode(_textured(375, 500), quality=90)
  full = tf.io.decode_jpeg(
    encoded, channels=3, dct_method="INTEGER_ACCURATE"
  ).numpy()
  params = _crop_params_ds(8)
  images = _map_batched(
    lambda p: ia.train_crop(tf, encoded, p, size=64), params
  )
  windows = _map_batched(
    lambda p: tf.stack(
      ia.crop_window(tf, (375, 500), p["area"], p["aspect"], p["offset"])
    ),
    params,
  )
  assert images.shape == (8, 64, 64, 3) and images.dtype == np.uint8
  for image, (oy, ox, h, w) in zip(images, windows):
    expected = _resize(full[oy : oy + h, ox : ox + w], 64, 64)
    # PIL's resize rounds to uint8 after each of its two passes (fixed point): within one
    # grey level of the exact triangle filter, and mostly the rounded value itself.
    diff = np.abs(image - expected)
    assert diff.max() < 1.0 + 1e-6 and diff.mean() < 0.35, (
      diff.max(),
      diff.mean(),
    )
  # Constant colour in, the same colour out, whatever the window.
  flat = _encode(np.full((90, 120, 3), (200, 100, 50), np.uint8), "PNG")
  out = _map_batched(lambda p: ia.train_crop(tf, flat, p), params)
  np.testing.assert_array_equal(
    out, np.broadcast_to(np.uint8([200, 100, 50]), out.shape)
  )


def _finish(crops, params):
  """The accelerator's part of the training view, as the streaming iterator calls it."""
  keys = ia.TrainAugment.device_keys
  return np.asarray(
    jax.jit(ia.TrainAugment().finish)(crops, {k: params[k] for k in keys})
  )


def test_flip_mirrors_where_drawn():
  n = 2000
  image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
  params = _params(n)
  params["factors"] = np.ones_like(params["factors"])  # jitter by 1: no change
  out = _finish(np.broadcast_to(image, (n, 4, 5, 3)), params) * STD + MEAN
  plain, mirrored = image / 255, image[:, ::-1] / 255
  flipped = np.abs(out - mirrored).max((1, 2, 3)) < 1e-5
  assert ((np.abs(out - plain).max((1, 2, 3)) < 1e-5) ^ flipped).all()
  np.testing.assert_array_equal(flipped, params["flip"])
  assert abs(flipped.mean() - 0.5) < 0.04


def _jitter_reference(image, factors, order):
  x = image.astype(np.float64)
  grey_weights = np.array([0.299, 0.587, 0.114])
  for which in order:
    f = factors[which]
    grey = (x @ grey_weights)[..., None]
    target = (0.0, grey.mean(), grey)[which]
    x = np.clip(f * x + (1 - f) * target, 0, 1)
  return x


def test_color_jitter_matches_numpy_reference():
  n = 600
  images = (
    np.random.default_rng(1).uniform(0, 1, (n, 6, 7, 3)).astype(np.float32)
  )
  images[::2] *= (
    0.5  # dark ones, for brightness gains that do not clip everything
  )
  params = _params(n)
  factors, order = params["factors"], params["order"]
  out = (
    np.asarray(
      jax.jit(device_augment.color_jitter)(images * 255, factors, order)
    )
    / 255
  )
  assert factors.min() >= 0.6 and factors.max() <= 1.4
  assert factors.min() < 0.62 and factors.max() > 1.38
  np.testing.assert_allclose(
    factors.mean(0), 1.0, atol=0.045
  )  # 4.5 standard errors
  assert (np.sort(order, 1) == [0, 1, 2]).all()
  counts = np.unique([tuple(o) for o in order], axis=0, return_counts=True)[1]
  assert len(counts) == 6 and counts.min() > 60 and counts.max() < 140
  for i in range(n):
    expected = _jitter_reference(images[i], factors[i], order[i])
    np.testing.assert_allclose(out[i], expected, atol=2e-6)
  # The order matters (the reference with a fixed order differs somewhere).
  fixed = [
    _jitter_reference(images[i], factors[i], [0, 1, 2]) for i in range(50)
  ]
  assert max(np.abs(out[i] - fixed[i]).max() for i in range(50)) > 0.01


def test_normalize():
  image = np.array([[[0.485, 0.456, 0.406], [1.0, 0.0, 0.5]]], np.float32)
  expected = [[[0, 0, 0], (np.array([1, 0, 0.5]) - MEAN) / STD]]
  np.testing.assert_allclose(
    device_augment.normalize(image * 255), expected, atol=1e-6
  )
  grey = np.array([[[0, 128, 255]]], np.uint8)
  np.testing.assert_allclose(
    device_augment.normalize(grey), (grey / 255 - MEAN) / STD, atol=1e-6
  )


def _views(encoded, params):
  crops = _map_batched(lambda b, p: ia.train_crop(tf, b, p), encoded, params)
  assert crops.dtype == np.uint8
  return _finish(crops, params)


# tests/conftest.py turns XLA:CPU's fusion emitters off to compile faster;
# then a view batched with others and the same view alone differ in their
# last bits (and the test takes 3.5 min instead of 9 s). The invariance
# is a property of XLA's defaults, so that test runs in a process with them.
_EMITTERS_OFF = '--xla_cpu_use_fusion_emitters=false'
_DEFAULT_EMITTERS = _EMITTERS_OFF not in os.environ.get('XLA_FLAGS', '')


def test_train_image_is_pure_with_xla_default_emitters():
  if _DEFAULT_EMITTERS:
    pytest.skip('this process has them: the test below runs here')
  node = f'{__file__}::test_train_image_is_a_pure_function_of_seed_and_position'
  flags = os.environ['XLA_FLAGS'].replace(_EMITTERS_OFF, '')
  res = subprocess.run(
    [
      sys.executable,
      '-m',
      'pytest',
      '-q',
      '-n',
      '0',
      '-p',
      'no:cacheprovider',
      node,
    ],
    env=dict(os.environ, XLA_FLAGS=flags),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert res.returncode == 0 and '1 passed' in res.stdout, res.stdout[-3000:]


@pytest.mark.skipif(not _DEFAULT_EMITTERS, reason='runs in its own process')
def test_train_image_is_a_pure_function_of_seed_and_position():
  encoded = [_encode(_textured(375, 500, seed=i), quality=90) for i in range(2)]
  inputs = tf.constant(encoded * 4)
  params = _params(8)
  first = _views(inputs, params)
  again = _views(inputs, params)
  assert first.shape == (8, 224, 224, 3) and first.dtype == np.float32
  assert first.tobytes() == again.tobytes()
  eager = ia.train_image(tf, tf.constant(encoded[1]), 5, 3)
  assert eager.tobytes() == first[3].tobytes()
  # Same image, different positions: different views.
  assert not np.array_equal(first[0], first[2]) and not np.array_equal(
    first[1], first[3]
  )
  # In the normalised range of [0, 1] images.
  assert first.min() >= ((0 - MEAN) / STD).min() - 1e-5
  assert first.max() <= ((1 - MEAN) / STD).max() + 1e-5
  # The view is the crop (tested above), flip, jitter, normalise of the drawn parameters,
  # step by step.
  for i in range(8):
    row = {k: v[i] for k, v in params.items()}
    image = ia.train_crop(tf, tf.constant(encoded[i % 2]), row).numpy() / 255
    if row["flip"]:
      image = image[:, ::-1]
    image = _jitter_reference(image, row["factors"], row["order"])
    np.testing.assert_allclose(first[i], (image - MEAN) / STD, atol=2e-5)
  # TrainAugment, as the streaming path uses it, is the same view.
  aug = ia.TrainAugment(size=224)
  p = aug.params(5, np.arange(8))
  np.testing.assert_array_equal(p["area"], params["area"])
  crop = aug.example(
    tf, tf.constant(encoded[0]), {k: v[2] for k, v in p.items()}
  ).numpy()
  assert (
    _finish(crop[None], {k: v[2:3] for k, v in p.items()}).tobytes()
    == first[2].tobytes()
  )


def _eval_views(encoded):
  crops = _map_batched(lambda b: ia.eval_crop(tf, b), encoded)
  assert crops.dtype == np.uint8
  return np.asarray(jax.jit(ia.eval_finish)(crops))


@pytest.mark.parametrize(
  "shape_hw", [(300, 459), (459, 300), (256, 256), (240, 700)]
)
def test_eval_image_matches_resize_and_torchvision_centre_crop(shape_hw):
  height, width = shape_hw
  image = _textured(height, width, seed=3)
  encoded = _encode(
    image, "PNG"
  )  # lossless: the reference sees the same pixels
  crops = _map_batched(
    lambda b: ia.eval_crop(tf, b), tf.constant([encoded, encoded])
  )
  out = _eval_views(tf.constant([encoded, encoded]))
  assert out.shape == (2, 224, 224, 3) and out[0].tobytes() == out[1].tobytes()
  # torchvision: Resize(256) keeps the aspect with int(256 * long / short); CenterCrop(224)
  # offsets int(round((H - 224) / 2.0)), e.g. 391 -> round(83.5) = 84.
  short, long = min(shape_hw), max(shape_hw)
  new_long = int(256 * long / short)
  new_h, new_w = (new_long, 256) if width <= height else (256, new_long)
  top, left = int(round((new_h - 224) / 2.0)), int(round((new_w - 224) / 2.0))
  expected = _resize(image, new_h, new_w)[top : top + 224, left : left + 224]
  # PIL's two rounded fixed-point passes: within one grey level of the exact filter.
  diff = np.abs(crops[0] - expected)
  assert diff.max() < 1.0 + 1e-6 and diff.mean() < 0.35, (
    diff.max(),
    diff.mean(),
  )
  np.testing.assert_allclose(out[0] * STD + MEAN, crops[0] / 255, atol=1e-6)


def test_eval_image_constant_and_gradient():
  colour = np.array([200, 100, 50])
  flat = _encode(
    np.full((300, 400, 3), colour, np.uint8), "JPEG", quality=95, subsampling=0
  )
  out = _eval_views(tf.constant([flat]))[0]
  np.testing.assert_allclose(
    out,
    np.broadcast_to((colour / 255 - MEAN) / STD, out.shape),
    atol=2 / 255 / STD.min(),
  )
  # Steps of at least one grey level per pixel; upsampled to 256 x 341, then cropped.
  ramp = np.broadcast_to(
    np.linspace(0, 255, 200).round().astype(np.uint8)[None, :, None],
    (150, 200, 3),
  )
  out = _eval_views(tf.constant([_encode(np.ascontiguousarray(ramp), "PNG")]))[
    0
  ]
  # Left to right never decreases (uint8: neighbours may share a grey level) and spans
  # the centre crop's share of the ramp.
  assert (np.diff(out, axis=1) >= 0).all() and (
    np.diff(out, axis=1) > 0
  ).mean() > 0.5
  np.testing.assert_allclose(
    out, np.broadcast_to(out[:1], out.shape), atol=1e-6
  )


@pytest.mark.parametrize(
  "fmt, mode", [("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "L"), ("JPEG", "L")]
)
def test_png_and_grey_inputs(fmt, mode):
  array = _textured(120, 90)
  encoded = _encode(array, fmt, mode=mode)
  if fmt == "JPEG":  # PIL's IDCT, which is not TF's default one
    full = tf.io.decode_jpeg(
      encoded, channels=3, dct_method="INTEGER_ACCURATE"
    ).numpy()
  else:
    full = tf.io.decode_image(
      encoded, channels=3, expand_animations=False
    ).numpy()
  params = {k: v[0] for k, v in _params(1, seed=3).items()}
  crop, window = ia.decode_crop(tf, tf.constant(encoded), params)
  oy, ox, h, w = window.numpy()
  np.testing.assert_array_equal(crop.numpy(), full[oy : oy + h, ox : ox + w])
  if fmt == "PNG" and mode != "L":
    np.testing.assert_array_equal(full, array)  # lossless, alpha dropped
  if mode == "L":
    assert (full[..., 0] == full[..., 1]).all() and (
      full[..., 0] == full[..., 2]
    ).all()
  images = _views(tf.constant([encoded] * 2), _params(2))
  assert images.shape == (2, 224, 224, 3) and np.isfinite(images).all()
  assert ia.eval_crop(tf, tf.constant(encoded)).shape == (224, 224, 3)
