"""Sources on tiny files written to tmp_path: formats, layout, LT protocol, error messages."""

import collections
import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from lcreg_jax import config as config_lib
from lcreg_jax.data import longtail
from lcreg_jax.data import sources


def _config(**overrides):
  # Start from the real config section so the tests see every key a run has.
  cfg = config_lib.base_config().data
  cfg.update(
    dict(
      source="cifar10",
      data_dir="",
      tfds_name="cifar10",
      tfds_data_dir="",
      imbalance_factor=1.0,
      lt_seed=0,
      num_classes=10,
      image_size=32,
      channels=3,
      digits_test_per_class=30,
      val_per_class=0,
    )
  )
  cfg.update(overrides)
  return cfg


def _hwc_to_rows(images):
  return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _balanced(rng, num_classes, per_class, shape):
  labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
  return rng.integers(0, 256, (len(labels),) + shape, dtype=np.uint8), labels


def _write_pickle(path, obj):
  with open(path, "wb") as f:
    pickle.dump(obj, f, protocol=2)


def _write_cifar10(root, rng, per_class=(4, 2)):
  """5 train batches of per_class[0] per class each and a test batch; returns HWC arrays."""
  os.makedirs(root)
  parts = []
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    images, labels = _balanced(
      rng, 10, per_class[name == "test_batch"], (32, 32, 3)
    )
    _write_pickle(
      os.path.join(root, name),
      {
        b"batch_label": b"x",
        b"labels": labels.tolist(),
        b"data": _hwc_to_rows(images),
        b"filenames": [],
      },
    )
    parts.append((images, labels))
  train = (
    np.concatenate([p[0] for p in parts[:5]]),
    np.concatenate([p[1] for p in parts[:5]]),
  )
  return train, parts[5]


def _write_idx(path, array, magic):
  raw = (
    struct.pack(f">I{array.ndim}I", magic, *array.shape)
    + array.astype(np.uint8).tobytes()
  )
  with (gzip.open if path.endswith(".gz") else open)(path, "wb") as f:
    f.write(raw)


def _write_idx_dir(root, rng, gz, per_class=(12, 3)):
  os.makedirs(root)
  arrays = {}
  for prefix, n in (("train", per_class[0]), ("t10k", per_class[1])):
    images, labels = _balanced(rng, 10, n, (28, 28))
    ext = ".gz" if gz else ""
    _write_idx(
      os.path.join(root, f"{prefix}-images-idx3-ubyte{ext}"), images, 0x803
    )
    _write_idx(
      os.path.join(root, f"{prefix}-labels-idx1-ubyte{ext}"), labels, 0x801
    )
    arrays[prefix] = (images, labels)
  return arrays


def test_cifar10_layout_and_long_tail(tmp_path):
  root = str(tmp_path / "cifar-10-batches-py")
  (train_x, train_y), (test_x, test_y) = _write_cifar10(
    root, np.random.default_rng(0)
  )
  ds = sources.load_dataset(
    _config(data_dir=root, imbalance_factor=10, lt_seed=3)
  )
  # Test split: untouched order; pixel (y=5, x=7, channel 2) sits at 2*1024 + 5*32 + 7 of a row.
  rows = _hwc_to_rows(test_x)
  assert ds.test.images[4, 5, 7, 2] == rows[4, 2 * 1024 + 5 * 32 + 7]
  np.testing.assert_array_equal(ds.test.images, test_x)
  np.testing.assert_array_equal(ds.test.labels, test_y)
  assert ds.test.images.dtype == np.uint8 and ds.test.labels.dtype == np.int32
  # Train: the protocol applied to batches 1..5 in canonical order.
  keep = longtail.lt_indices(train_y, 10, seed=3)
  np.testing.assert_array_equal(ds.train.images, train_x[keep])
  np.testing.assert_array_equal(ds.train.labels, train_y[keep])
  np.testing.assert_array_equal(ds.class_counts, longtail.lt_counts(20, 10, 10))
  np.testing.assert_array_equal(
    ds.class_counts, [20, 15, 11, 9, 7, 5, 4, 3, 2, 2]
  )
  assert (
    ds.val is None
    and ds.num_classes == 10
    and ds.class_counts.dtype == np.int64
  )


def test_cifar100_fine_labels_from_parent_dir(tmp_path):
  rng = np.random.default_rng(1)
  root = tmp_path / "cifar-100-python"
  root.mkdir()
  arrays = {}
  for name, per_class in (("train", 5), ("test", 1)):
    images, fine = _balanced(rng, 100, per_class, (32, 32, 3))
    _write_pickle(
      str(root / name),
      {
        b"data": _hwc_to_rows(images),
        b"fine_labels": fine.tolist(),
        b"coarse_labels": (fine // 5).tolist(),
      },
    )
    arrays[name] = (images, fine)
  ds = sources.load_dataset(
    _config(
      source="cifar100",
      data_dir=str(tmp_path),
      num_classes=100,
      imbalance_factor=5,
    )
  )
  np.testing.assert_array_equal(ds.test.labels, arrays["test"][1])
  np.testing.assert_array_equal(ds.test.images, arrays["test"][0])
  np.testing.assert_array_equal(ds.class_counts, longtail.lt_counts(5, 100, 5))
  keep = longtail.lt_indices(arrays["train"][1], 5)
  np.testing.assert_array_equal(ds.train.images, arrays["train"][0][keep])


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files(tmp_path, gz):
  root = str(tmp_path / "fmnist")
  arrays = _write_idx_dir(root, np.random.default_rng(2), gz)
  ds = sources.load_dataset(
    _config(
      source="idx",
      data_dir=root,
      image_size=28,
      channels=1,
      imbalance_factor=4,
      lt_seed=1,
    )
  )
  np.testing.assert_array_equal(ds.test.images, arrays["t10k"][0][..., None])
  np.testing.assert_array_equal(ds.test.labels, arrays["t10k"][1])
  keep = longtail.lt_indices(arrays["train"][1], 4, seed=1)
  np.testing.assert_array_equal(
    ds.train.images, arrays["train"][0][keep][..., None]
  )
  np.testing.assert_array_equal(ds.class_counts, longtail.lt_counts(12, 10, 4))


def test_val_carve(tmp_path):
  root = str(tmp_path / "c10")
  _write_cifar10(root, np.random.default_rng(3))
  base = sources.load_dataset(_config(data_dir=root, imbalance_factor=10))
  ds = sources.load_dataset(
    _config(data_dir=root, imbalance_factor=10, val_per_class=3)
  )
  lt = base.class_counts  # [20, 15, 11, 9, 7, 5, 4, 3, 2, 2]
  n_val = np.minimum(3, lt // 5)
  np.testing.assert_array_equal(np.bincount(ds.val.labels, minlength=10), n_val)
  np.testing.assert_array_equal(ds.class_counts, lt - n_val)
  for c in range(10):
    members = base.train.images[base.train.labels == c]
    np.testing.assert_array_equal(
      ds.val.images[ds.val.labels == c], members[: n_val[c]]
    )
    np.testing.assert_array_equal(
      ds.train.images[ds.train.labels == c], members[n_val[c] :]
    )


def test_carve_val_on_features():
  labels = np.array(
    [0, 1, 0, 0, 1, 0, 0, 2]
  )  # class 0: 5 samples, class 1: 2, class 2: 1
  features = np.arange(16, dtype=np.float32).reshape(8, 2)
  train, val = sources.carve_val(sources.Split(features, labels), 3, 4)
  np.testing.assert_array_equal(
    val.labels, [0]
  )  # min(4, 5 // 5) = 1; tail classes keep all
  np.testing.assert_array_equal(val.images, features[:1])
  np.testing.assert_array_equal(train.labels, labels[1:])
  np.testing.assert_array_equal(train.images, features[1:])


def test_digits_split():
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  ds = sources.load_dataset(
    _config(
      source="digits", image_size=8, channels=1, imbalance_factor=10, lt_seed=5
    )
  )
  np.testing.assert_array_equal(np.bincount(ds.test.labels), [30] * 10)
  raw = datasets.load_digits()
  pool = np.bincount(raw.target) - 30
  np.testing.assert_array_equal(
    ds.class_counts, longtail.lt_counts(pool.min(), 10, 10)
  )
  assert ds.train.images.shape[1:] == (8, 8, 1) and ds.train.images.max() == 255
  # Disjoint: every image is used at most as often as it occurs in the raw set (identical
  # digits may occur twice, so count byte strings rather than compare sets).
  scaled = np.round(raw.images * 255 / 16).astype(np.uint8)
  available = collections.Counter(
    (x.tobytes(), y) for x, y in zip(scaled, raw.target)
  )
  used = collections.Counter(
    (x[..., 0].tobytes(), y)
    for split in (ds.train, ds.test)
    for x, y in zip(split.images, split.labels)
  )
  assert not used - available
  # The test split is the first 30 per class of the seeded permutation.
  order = np.random.RandomState(5).permutation(len(raw.target))
  expected = np.sort(
    np.concatenate([order[raw.target[order] == c][:30] for c in range(10)])
  )
  np.testing.assert_array_equal(ds.test.images[..., 0], scaled[expected])


def _raises(cfg, *fragments):
  with pytest.raises(sources.DataError) as info:
    sources.load_dataset(cfg)
  for fragment in fragments:
    assert fragment in str(info.value), str(info.value)
  return str(info.value)


def test_idx_errors(tmp_path):
  root = str(tmp_path / "idx")
  arrays = _write_idx_dir(root, np.random.default_rng(4), gz=False)
  cfg = _config(source="idx", data_dir=root, image_size=28, channels=1)
  images_path = os.path.join(root, "train-images-idx3-ubyte")
  _write_idx(images_path, arrays["train"][0], 0x801)
  _raises(cfg, "corrupt IDX file", images_path, "magic", "fresh copy")
  with open(
    images_path, "wb"
  ) as f:  # header promises more bytes than the file holds
    f.write(struct.pack(">IIII", 0x803, 120, 28, 28) + b"\0" * 100)
  _raises(cfg, "corrupt IDX file", images_path, "(120, 28, 28)", "fresh copy")
  os.remove(images_path)
  _raises(cfg, "train-images-idx3-ubyte", root, "--config.data.data_dir")


def test_cifar_errors(tmp_path):
  root = str(tmp_path / "cifar-10-batches-py")
  _write_cifar10(root, np.random.default_rng(5))
  _raises(_config(data_dir=""), "python version", "--config.data.data_dir")
  missing = str(tmp_path / "nowhere")
  _raises(
    _config(data_dir=missing),
    missing,
    "python version",
    "--config.data.data_dir",
  )
  _raises(
    _config(data_dir=root, image_size=28),
    "wrong image shape: expected (28, 28, 3) got (32, 32, 3)",
    "data_batch_1",
    "--config.data.image_size",
  )
  _raises(
    _config(data_dir=root, num_classes=8),
    "label out of range",
    "found label",
    "data_batch_1",
    "--config.data.num_classes",
  )
  _raises(
    _config(data_dir=root, num_classes=12),
    "classes [10, 11] have no training images",
    "--config.data.num_classes",
  )
  batch3 = os.path.join(root, "data_batch_3")
  with open(batch3, "wb") as f:
    f.write(b"\x80\x02}q\x00(garbage")
  _raises(_config(data_dir=root), "corrupt CIFAR file", batch3, "re-extract")
  # A pickle that would build anything but arrays is refused, not executed.
  _write_pickle(batch3, {b"data": collections.OrderedDict(), b"labels": []})
  _raises(
    _config(data_dir=root),
    "corrupt CIFAR file",
    batch3,
    "collections.OrderedDict",
  )


def test_label_out_of_range_names_file(tmp_path):
  root = str(tmp_path / "c10")
  _write_cifar10(root, np.random.default_rng(6))
  path = os.path.join(root, "data_batch_2")
  with open(path, "rb") as f:
    batch = pickle.load(f, encoding="bytes")
  batch[b"labels"][7] = 10
  _write_pickle(path, batch)
  _raises(
    _config(data_dir=root),
    "found label 10 in " + path,
    "--config.data.num_classes",
  )


def test_unknown_source_and_bad_imbalance():
  _raises(_config(source="mnist"), "'mnist'", "--config.data.source")
  _raises(
    _config(source="digits", imbalance_factor=0.5),
    "--config.data.imbalance_factor",
  )


def test_tfds_mock_converts():
  tfds = pytest.importorskip("tensorflow_datasets")
  for name, shape in (("cifar10", (32, 32, 3)), ("fashion_mnist", (28, 28, 1))):
    with tfds.testing.mock_data(num_examples=150):
      ds = sources.load_dataset(
        _config(
          source="tfds",
          tfds_name=name,
          imbalance_factor=2,
          image_size=shape[0],
          channels=shape[2],
        )
      )
      reference = {
        split: list(tfds.as_numpy(tfds.load(name, split=split, download=False)))
        for split in ("train", "test")
      }
    test_images = np.stack([ex["image"] for ex in reference["test"]]).reshape(
      (-1,) + shape
    )
    np.testing.assert_array_equal(ds.test.images, test_images)
    np.testing.assert_array_equal(
      ds.test.labels, [ex["label"] for ex in reference["test"]]
    )
    train_labels = np.array([ex["label"] for ex in reference["train"]])
    keep = longtail.lt_indices(train_labels, 2)
    np.testing.assert_array_equal(ds.train.labels, train_labels[keep])
    train_images = np.stack([ex["image"] for ex in reference["train"]]).reshape(
      (-1,) + shape
    )
    np.testing.assert_array_equal(ds.train.images, train_images[keep])
    assert ds.train.images.dtype == np.uint8 and ds.name == f"{name}-lt2"


def test_tfds_missing_dataset(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  missing = str(tmp_path / "no_tfds")
  _raises(
    _config(source="tfds", tfds_name="cifar10", tfds_data_dir=missing),
    missing,
    "tfds build cifar10",
    "--config.data.tfds_data_dir",
  )
  _raises(
    _config(source="tfds", tfds_name="no_such_set", tfds_data_dir=missing),
    "'no_such_set'",
    "--config.data.tfds_name",
  )


@pytest.mark.skipif(
  not os.path.isdir(sources.DEFAULT_IDX_DIR),
  reason="Debian package dataset-fashion-mnist not installed",
)
def test_installed_fashion_mnist():
  for prefix, n in (("train", 60000), ("t10k", 10000)):
    with gzip.open(
      os.path.join(sources.DEFAULT_IDX_DIR, f"{prefix}-images-idx3-ubyte.gz")
    ) as f:
      assert struct.unpack(">IIII", f.read(16)) == (0x803, n, 28, 28)
  ds = sources.load_dataset(
    _config(source="idx", image_size=28, channels=1, imbalance_factor=100)
  )
  assert len(ds.test.labels) == 10000
  np.testing.assert_array_equal(np.bincount(ds.test.labels), [1000] * 10)
  np.testing.assert_array_equal(
    ds.class_counts, [6000, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60]
  )
  assert len(ds.train.labels) == 14886
