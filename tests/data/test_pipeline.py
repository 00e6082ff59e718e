"""Input pipeline: resume determinism, sampling, augmentation invariants, sharding, eval padding.

Samples are made identifiable: labels are the sample index (the pipeline never interprets
them) and, where images must be matched, mean 0 / std 1 makes the output x / 255 exactly
invertible.
"""

import collections
import itertools
import math

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from lcreg_jax.data import augment
from lcreg_jax.data import pipeline
from lcreg_jax.data import samplers

N_DEV = len(jax.devices())
BATCH = math.lcm(8, N_DEV)


def _sharding():
  return NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))


def _images(n, size=8, seed=0):
  return np.random.default_rng(seed).integers(
    0, 256, (n, size, size, 3), dtype=np.uint8
  )


def _train(images, labels, steps, **kwargs):
  kwargs = {
    "global_batch_size": BATCH,
    "sharding": _sharding(),
    "seed": 7,
    "mean": 0.0,
    "std": 1.0,
    **kwargs,
  }
  it = pipeline.make_train_iterator(images, labels, **kwargs)
  return [jax.tree.map(np.asarray, b) for b in itertools.islice(it, steps)]


def _uint8(image):
  return np.round(image * 255).astype(np.uint8)


@pytest.mark.parametrize("sampler", ["shuffle", "class_balanced"])
def test_resume_is_bit_identical(sampler):
  n = 5 * BATCH + 3  # 5 steps per epoch, remainder dropped
  images, labels = _images(n), np.arange(n) % 3
  mean, std = augment.normalization_stats(images)
  kwargs = dict(sampler=sampler, samples_per_class=2, mean=mean, std=std)
  full = _train(images, labels, 13, **kwargs)
  for start in (3, 5, 9):  # mid-epoch, epoch boundary, second epoch
    resumed = _train(images, labels, 13 - start, start_step=start, **kwargs)
    for a, b in zip(full[start:], resumed):
      assert a["image"].tobytes() == b["image"].tobytes()
      np.testing.assert_array_equal(a["label"], b["label"])
  assert (
    full[0]["image"].dtype == np.float32 and full[0]["label"].dtype == np.int32
  )
  # Epochs differ, and so do seeds: the checks above are not trivially satisfied.
  assert not np.array_equal(full[0]["label"], full[5]["label"])
  other = _train(images, labels, 1, seed=8, **kwargs)
  assert not np.array_equal(full[0]["image"], other[0]["image"])


def test_shuffle_covers_each_index_once_per_epoch():
  n = 4 * BATCH + 5
  batches = _train(_images(n), np.arange(n), 8, augment="none")
  for epoch in (batches[:4], batches[4:]):
    seen = np.concatenate([b["label"] for b in epoch])
    assert len(seen) == 4 * BATCH == len(np.unique(seen))
  assert not np.array_equal(batches[0]["label"], batches[4]["label"])


def test_images_follow_labels_and_normalisation_matches_numpy():
  n = 3 * BATCH
  images = _images(n)
  mean, std = augment.normalization_stats(images)
  x = images.reshape(-1, 3) / 255.0
  np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6)
  np.testing.assert_allclose(std, x.std(0), rtol=1e-5)
  assert mean.dtype == std.dtype == np.float32 and mean.shape == (3,)
  for b in _train(images, np.arange(n), 3, augment="none", mean=mean, std=std):
    expected = (images[b["label"]] / 255.0 - mean.astype(np.float64)) / std
    np.testing.assert_allclose(b["image"], expected, rtol=0, atol=1e-5)


def test_flip_gives_original_or_mirror():
  n = 4 * BATCH
  images = _images(n)
  kinds = collections.Counter()
  for b in _train(images, np.arange(n), 8, augment="flip", pad=0):
    for image, index in zip(_uint8(b["image"]), b["label"]):
      same, mirror = (
        np.array_equal(image, images[index]),
        np.array_equal(image, images[index][:, ::-1]),
      )
      assert same or mirror
      kinds[same] += 1
  assert kinds[True] > 0 and kinds[False] > 0


@pytest.mark.parametrize("augment", ["crop_flip", "crop"])
def test_crop_is_a_window_of_the_zero_padded_image(augment):
  n, pad, size = 4 * BATCH, 2, 6
  images = _images(n, size=size)
  padded = np.pad(images, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
  found = collections.Counter()
  for b in _train(images, np.arange(n), 8, augment=augment, pad=pad):
    for image, index in zip(_uint8(b["image"]), b["label"]):
      matches = [
        (dy, dx, flip)
        for dy in range(2 * pad + 1)
        for dx in range(2 * pad + 1)
        for flip in (0, 1)
        if np.array_equal(
          image,
          (lambda w: w[:, ::-1] if flip else w)(
            padded[index, dy : dy + size, dx : dx + size]
          ),
        )
      ]
      assert matches, f"sample {index} is no shifted (mirrored) window"
      found.update(matches)
  assert (
    len({(dy, dx) for dy, dx, _ in found}) >= 15
  )  # of 25: offsets really vary
  # A window can match both ways only if symmetric; 'crop' must never need the mirror.
  assert {f for _, _, f in found} == ({0, 1} if augment == "crop_flip" else {0})


def _blocks_and_cycles(labels, order, per_class):
  blocks = order.reshape(-1, per_class)
  block_class = labels[blocks[:, 0]]
  np.testing.assert_array_equal(
    labels[blocks], np.repeat(block_class[:, None], per_class, 1)
  )
  return block_class


def test_class_balanced_order():
  labels = np.repeat(np.arange(5), [40, 13, 7, 3, 1])
  rng = np.random.default_rng(0)
  order = samplers.class_balanced_order(labels, 4 * 5 * 60, 4, rng)
  assert order.shape == (1200,) and order.dtype == np.int64
  block_class = _blocks_and_cycles(labels, order, 4)
  # The class cycle: each run of 5 blocks visits every class once, in a varying order.
  cycles = block_class.reshape(-1, 5)
  assert (np.sort(cycles, 1) == np.arange(5)).all()
  assert len({tuple(c) for c in cycles}) > 10
  counts = np.bincount(block_class)
  assert counts.max() - counts.min() <= 1
  # Within a class, draws run through full permutations of its members before repeating.
  for c in range(5):
    members = np.flatnonzero(labels == c)
    drawn = order[labels[order] == c]
    full = len(drawn) // len(members) * len(members)
    for cycle in drawn[:full].reshape(-1, len(members)):
      np.testing.assert_array_equal(np.sort(cycle), members)
    assert len(np.unique(drawn[full:])) == len(drawn) - full
  # The last block is truncated to num_samples; the same rng state gives the same order.
  assert (
    len(samplers.class_balanced_order(labels, 10, 4, np.random.default_rng(1)))
    == 10
  )
  np.testing.assert_array_equal(
    samplers.class_balanced_order(labels, 50, 4, np.random.default_rng(3)),
    samplers.class_balanced_order(labels, 50, 4, np.random.default_rng(3)),
  )


def test_class_balanced_sampler_in_iterator():
  labels = np.repeat(np.arange(4), [20, 8, 4, 4])
  n = len(labels)
  batches = _train(
    _images(n),
    labels,
    3,
    sampler="class_balanced",
    samples_per_class=4,
    augment="none",
  )
  order = np.concatenate([b["label"] for b in batches])
  _blocks_and_cycles(
    labels, order, 4
  )  # labels are classes here: each block is one class
  counts = np.bincount(order, minlength=4)
  assert counts.max() - counts.min() <= 4


def test_global_arrays_are_sharded():
  sharding = _sharding()
  it = pipeline.make_train_iterator(
    _images(2 * BATCH),
    np.arange(2 * BATCH),
    global_batch_size=BATCH,
    sharding=sharding,
    seed=7,
    augment="none",
    mean=0.0,
    std=1.0,
  )
  arrays = next(it)
  assert len(np.unique(np.asarray(arrays["label"]))) == BATCH
  for key in ("image", "label"):
    assert arrays[key].sharding == sharding and arrays[key].shape[0] == BATCH
    shards = sorted(
      arrays[key].addressable_shards, key=lambda s: s.index[0].start
    )
    assert [s.device for s in shards] == list(
      jax.devices()
    )  # device i holds block i
    assert all(s.data.shape[0] == BATCH // N_DEV for s in shards)
    np.testing.assert_array_equal(
      np.concatenate([np.asarray(s.data) for s in shards]),
      np.asarray(arrays[key]),
    )


def test_indivisible_batch_is_rejected():
  if N_DEV == 1:
    pytest.skip("every batch size divides one device")
  with pytest.raises(ValueError, match=f"not divisible by the {N_DEV} devices"):
    pipeline.make_train_iterator(
      _images(20),
      np.arange(20),
      global_batch_size=N_DEV + 1,
      sharding=_sharding(),
      seed=0,
      mean=0.0,
      std=1.0,
    )
  with pytest.raises(ValueError, match=f"multiple of {N_DEV}"):
    pipeline.make_eval_iterator(
      _images(20),
      np.arange(20),
      global_batch_size=N_DEV + 1,
      sharding=_sharding(),
      mean=0.0,
      std=1.0,
    )


def test_eval_pads_with_mask_and_keeps_order():
  n = 2 * BATCH + 3
  images, labels = _images(n), np.random.default_rng(1).integers(0, 10, n)
  mean, std = augment.normalization_stats(images)
  batches = [
    jax.tree.map(np.asarray, b)
    for b in pipeline.make_eval_iterator(
      images,
      labels,
      global_batch_size=BATCH,
      sharding=_sharding(),
      mean=mean,
      std=std,
    )
  ]
  assert len(batches) == 3
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.dtype == np.float32 and mask.sum() == n and mask[:n].all()
  np.testing.assert_array_equal(
    np.concatenate([b["label"] for b in batches])[:n], labels
  )
  image = np.concatenate([b["image"] for b in batches])
  np.testing.assert_allclose(
    image[:n], (images / 255.0 - mean.astype(np.float64)) / std, atol=1e-5
  )
  assert not image[n:].any()


def test_steps_per_epoch():
  assert samplers.steps_per_epoch(12406, 128) == 96
  assert samplers.steps_per_epoch(128, 128) == 1
  assert samplers.steps_per_epoch(5, 128) == 1


def test_a_class_balanced_epoch_is_the_largest_class_times_the_classes():
  # MiSLAS's ClassAwareSampler: max_c n_c x C samples (absent classes left
  # out); shuffling reads the training set once.
  counts = np.array([20, 8, 4, 0, 4])
  assert samplers.epoch_samples(counts, "class_balanced") == 20 * 4
  assert samplers.epoch_samples(counts, "shuffle") == 36


def _authors_loop_steps(n_train, batch, sampler_samples, method):
  """How many batches the authors' epoch loops train on, by running their
  loop conditions over a class-aware loader of `sampler_samples` samples:
  MiSLAS's stage-2 train() (`if i > end_steps: break`, end_steps =
  ceil(N/B)) and classifier-balancing's (`if step == int(N/B): break`)."""
  loader = range(-(-sampler_samples // batch))
  done = 0
  for i in loader:
    if method == "mislas" and i > int(np.ceil(n_train / batch)):
      break
    if method != "mislas" and i == int(n_train / batch):
      break
    done += 1
  return done


@pytest.mark.parametrize("method", ["mislas", "crt", "lws"])
def test_a_class_balanced_training_epoch_is_the_authors_count(method):
  # Fashion-MNIST-LT at IF 100: 6000 .. 60 a class, 14,886 in all.
  counts = np.floor(6000 * 0.01 ** (np.arange(10) / 9)).astype(int)
  assert counts.sum() == 14886
  want = _authors_loop_steps(14886, 128, 6000 * 10, method)
  assert want == {"mislas": 118, "crt": 116, "lws": 116}[method]
  assert (
    samplers.class_balanced_steps_per_epoch(counts, 128, "train_set", method)
    == want
  )
  # The whole sampler (lcreg_jax before the authors' count): 60000 // 128.
  assert (
    samplers.class_balanced_steps_per_epoch(counts, 128, "sampler", method)
    == 468
  )


def test_the_class_balanced_iterator_starts_epoch_1_after_that_many_steps():
  labels = np.repeat(np.arange(4), [20, 8, 4, 4])  # 80 samples an epoch
  spe = 80 // BATCH
  assert spe > len(labels) // BATCH  # a training-set epoch would be shorter
  batches = _train(
    _images(len(labels)),
    labels,
    spe + 1,
    sampler="class_balanced",
    samples_per_class=4,
    augment="none",
  )
  order = np.concatenate([b["label"] for b in batches])
  epoch = lambda e: samplers.epoch_order(
    labels,
    e,
    seed=7,
    sampler="class_balanced",
    samples_per_class=4,
    length=spe * BATCH,
  )
  np.testing.assert_array_equal(order[: spe * BATCH], labels[epoch(0)])
  np.testing.assert_array_equal(order[spe * BATCH :], labels[epoch(1)[:BATCH]])


def test_bad_arguments():
  with pytest.raises(ValueError, match="augment"):
    pipeline.make_train_iterator(
      _images(20),
      np.arange(20),
      global_batch_size=BATCH,
      sharding=_sharding(),
      seed=0,
      augment="rotate",
      mean=0.0,
      std=1.0,
    )
  with pytest.raises(ValueError, match="std > 0"):
    pipeline.make_eval_iterator(
      _images(20),
      np.arange(20),
      global_batch_size=BATCH,
      sharding=_sharding(),
      mean=0.0,
      std=[1.0, 0.0, 1.0],
    )
