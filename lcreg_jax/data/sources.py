"""Raw data sources -> long-tailed train / balanced test splits held in memory.

Only `data.dataset` uses these arrays; the rest of the package sees the
dataset's description and its batch iterators.

Sources: scikit-learn digits (embedded, no download), MNIST-style IDX files, CIFAR-10/100
"python version" folders and TFDS builds. Nothing here downloads anything: a missing or
damaged input raises `DataError` telling what was looked at and how to fix it.
"""

import dataclasses
import gzip
import os
import pickle
import struct

import numpy as np

from lcreg_jax.data import longtail
from lcreg_jax.errors import DataError

DEFAULT_IDX_DIR = "/usr/share/datasets/fashion-mnist"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
SOURCES = ("digits", "idx", "cifar10", "cifar100", "tfds")


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # (N, H, W, C) uint8
  labels: np.ndarray  # (N,) int32


@dataclasses.dataclass(frozen=True)
class LongTailDataset:
  name: str
  train: Split  # long-tailed
  test: Split  # balanced
  val: Split | None  # carved from the long-tailed train when val_per_class > 0
  num_classes: int
  class_counts: np.ndarray  # (C,) int64 counts of `train`


def load_dataset(data_config) -> LongTailDataset:
  """Loads `data_config.source`, applies the long-tailed protocol and carves val."""
  cfg = data_config
  if cfg.source not in SOURCES:
    raise DataError(
      f"unknown data source {cfg.source!r}; set --config.data.source to one of "
      f"{', '.join(SOURCES)}."
    )
  if cfg.imbalance_factor < 1:
    raise DataError(
      f"imbalance_factor must be >= 1 (1 = balanced), got {cfg.imbalance_factor}; "
      "fix --config.data.imbalance_factor."
    )
  (train, train_where), (test, _) = _READERS[cfg.source](cfg)
  counts = np.bincount(train.labels, minlength=cfg.num_classes)
  if (counts == 0).any():
    raise DataError(
      f"classes {np.flatnonzero(counts == 0).tolist()} have no training images in "
      f"{train_where}; set --config.data.num_classes to the number of classes "
      "actually present or fix the data."
    )
  keep = longtail.lt_indices(train.labels, cfg.imbalance_factor, cfg.lt_seed)
  train = Split(train.images[keep], train.labels[keep])
  val = None
  if cfg.val_per_class > 0:
    train, val = carve_val(train, cfg.num_classes, cfg.val_per_class)
  name = cfg.name or (cfg.tfds_name if cfg.source == "tfds" else cfg.source)
  if cfg.imbalance_factor > 1:
    name = f"{name}-lt{cfg.imbalance_factor:g}"
  return LongTailDataset(
    name=name,
    train=train,
    test=test,
    val=val,
    num_classes=cfg.num_classes,
    class_counts=np.bincount(train.labels, minlength=cfg.num_classes).astype(
      np.int64
    ),
  )


def carve_val(
  train: Split, num_classes: int, per_class: int
) -> tuple[Split, Split]:
  """Moves the first min(per_class, n_c // 5) samples of each class (in order) to val.

  The n_c // 5 cap keeps at least 80% of a tail class for training. `train.images` may be any
  per-sample array (e.g. features); relative order is kept in both parts.
  """
  labels = train.labels
  n_val = np.minimum(per_class, np.bincount(labels, minlength=num_classes) // 5)
  rank = np.empty(
    len(labels), np.int64
  )  # position of each sample within its class
  for c in range(num_classes):
    members = labels == c
    rank[members] = np.arange(members.sum())
  is_val = rank < n_val[labels]
  return (
    Split(train.images[~is_val], labels[~is_val]),
    Split(train.images[is_val], labels[is_val]),
  )


def _validate(
  images: np.ndarray,
  labels: np.ndarray,
  cfg,
  where: str,
  labels_where: str | None = None,
) -> Split:
  """Checks one file's arrays against the config; `where` (`labels_where`) names the file."""
  labels_where = labels_where or where
  expected = (cfg.image_size, cfg.image_size, cfg.channels)
  if images.ndim != 4 or images.shape[1:] != expected:
    raise DataError(
      f"wrong image shape: expected {expected} got {images.shape[1:]} in {where}; "
      "set --config.data.image_size and --config.data.channels to match the data, "
      "or point --config.data.data_dir at the intended data set."
    )
  if labels.ndim != 1 or len(labels) != len(images):
    raise DataError(
      f"{where} has {len(images)} images but labels of shape {labels.shape}; "
      "the file is damaged, replace it with a fresh copy."
    )
  bad = labels[(labels < 0) | (labels >= cfg.num_classes)]
  if bad.size:
    raise DataError(
      f"label out of range [0, {cfg.num_classes}): found label {int(bad[0])} in "
      f"{labels_where}; set --config.data.num_classes or fix the file."
    )
  return Split(
    np.ascontiguousarray(images, dtype=np.uint8), labels.astype(np.int32)
  )


def _concat(parts: list[Split]) -> Split:
  return Split(
    np.concatenate([p.images for p in parts]),
    np.concatenate([p.labels for p in parts]),
  )


# --- digits ------------------------------------------------------------------------------------


def _read_digits(cfg):
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  where = "sklearn.datasets.load_digits()"
  digits = datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int64)
  k = cfg.digits_test_per_class
  order = np.random.RandomState(cfg.lt_seed).permutation(len(labels))
  is_test = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    members = order[labels[order] == c]
    if len(members) <= k:
      raise DataError(
        f"class {c} of {where} has {len(members)} images, not more than "
        f"digits_test_per_class={k}; lower --config.data.digits_test_per_class."
      )
    is_test[members[:k]] = True
  # Both splits stay in the canonical (file) order; lt_indices does the shuffling.
  return (
    (_validate(images[~is_test], labels[~is_test], cfg, where), where),
    (_validate(images[is_test], labels[is_test], cfg, where), where),
  )


# --- IDX (MNIST, Fashion-MNIST) ----------------------------------------------------------------


def _idx_path(data_dir: str, base: str) -> str:
  for path in (
    os.path.join(data_dir, base),
    os.path.join(data_dir, base + ".gz"),
  ):
    if os.path.isfile(path):
      return path
  raise DataError(
    f"IDX file {base}[.gz] not found in {data_dir}; install Debian's "
    "dataset-fashion-mnist package (it fills the default folder "
    f"{DEFAULT_IDX_DIR}) or pass --config.data.data_dir pointing at a folder with "
    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
    "t10k-labels-idx1-ubyte (plain or .gz)."
  )


def read_idx(path: str, magic: int) -> np.ndarray:
  """Parses an uint8 IDX file (magic 0x803 images, 0x801 labels) into an array."""
  fix = "replace it with a fresh copy (e.g. reinstall dataset-fashion-mnist)."
  try:
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise DataError(
      f"corrupt IDX file {path}: cannot read it ({e}); {fix}"
    ) from e
  if len(raw) < 4 or struct.unpack(">I", raw[:4])[0] != magic:
    found = (
      f"{struct.unpack('>I', raw[:4])[0]:#010x}"
      if len(raw) >= 4
      else "a truncated header"
    )
    raise DataError(
      f"corrupt IDX file {path}: expected magic {magic:#010x}, found {found}; {fix}"
    )
  ndim = magic & 0xFF
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f"corrupt IDX file {path}: header truncated; {fix}")
  dims = struct.unpack(f">{ndim}I", raw[4:header])
  if len(raw) - header != int(np.prod(dims)):
    raise DataError(
      f"corrupt IDX file {path}: header says dims {dims} "
      f"({int(np.prod(dims))} bytes) but the file holds {len(raw) - header}; {fix}"
    )
  return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _read_idx_source(cfg):
  data_dir = cfg.data_dir or DEFAULT_IDX_DIR
  splits = []
  for prefix in ("train", "t10k"):
    images_path = _idx_path(data_dir, f"{prefix}-images-idx3-ubyte")
    labels_path = _idx_path(data_dir, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, 0x803)[..., None]
    labels = read_idx(labels_path, 0x801).astype(np.int64)
    if len(images) != len(labels):
      raise DataError(
        f"{images_path} holds {len(images)} images but {labels_path} holds "
        f"{len(labels)} labels; replace the mismatched file."
      )
    splits.append(
      (_validate(images, labels, cfg, images_path, labels_path), images_path)
    )
  return tuple(splits)


# --- CIFAR python version ----------------------------------------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
  """Only rebuilds NumPy arrays: a CIFAR batch needs nothing else, and it keeps a hostile
  pickle from running code."""

  _ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): np.ndarray((0,)).__reduce__()[0],
    ("numpy._core.multiarray", "_reconstruct"): np.ndarray((0,)).__reduce__()[
      0
    ],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): __import__(
      "codecs"
    ).encode,  # bytes pickled by Python 3
  }

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
    return self._ALLOWED[(module, name)]


def _read_cifar_file(path: str, label_key: bytes, cfg) -> Split:
  fix = (
    f"re-extract the CIFAR \"python version\" tarball from {CIFAR_URL} and point "
    "--config.data.data_dir at the extracted folder."
  )
  try:
    with open(path, "rb") as f:
      batch = _ArrayUnpickler(f, encoding="bytes").load()
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[label_key], dtype=np.int64)
  except FileNotFoundError as e:
    raise DataError(f"CIFAR file {path} is missing; {fix}") from e
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(
      f"corrupt CIFAR file {path}: {type(e).__name__}: {e}; {fix}"
    ) from e
  if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
    raise DataError(
      f"corrupt CIFAR file {path}: b'data' has shape {data.shape}, expected "
      f"(N, 3072); {fix}"
    )
  # Rows are stored channel-major (3 planes of 32x32); the models want HWC.
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return _validate(images, labels, cfg, path)


def _read_cifar(cfg):
  c10 = cfg.source == "cifar10"
  folder, train_files, label_key = (
    ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], b"labels")
    if c10
    else ("cifar-100-python", ["train"], b"fine_labels")
  )
  tarball = "cifar-10-python.tar.gz" if c10 else "cifar-100-python.tar.gz"
  fix = (
    f"download the CIFAR-{10 if c10 else 100} \"python version\" ({tarball}) from "
    f"{CIFAR_URL}, extract it and pass --config.data.data_dir=/path/to/{folder}."
  )
  if not cfg.data_dir:
    raise DataError(
      f"source {cfg.source!r} needs a data folder and none was given; {fix}"
    )
  data_dir = cfg.data_dir
  # Accept the folder that holds the extracted folder as well as the extracted folder itself.
  if not os.path.isfile(os.path.join(data_dir, train_files[0])):
    if os.path.isfile(os.path.join(data_dir, folder, train_files[0])):
      data_dir = os.path.join(data_dir, folder)
    else:
      raise DataError(
        f"no CIFAR file {train_files[0]} in {data_dir} "
        f"(nor in {os.path.join(data_dir, folder)}); {fix}"
      )
  train = _concat(
    [
      _read_cifar_file(os.path.join(data_dir, f), label_key, cfg)
      for f in train_files
    ]
  )
  test_path = os.path.join(data_dir, "test_batch" if c10 else "test")
  return (train, data_dir), (
    _read_cifar_file(test_path, label_key, cfg),
    test_path,
  )


# --- TFDS --------------------------------------------------------------------------------------


def _read_tfds(cfg):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from lcreg_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  pipeline.import_tf()  # hides GPUs from TensorFlow before TFDS touches it
  data_dir = cfg.tfds_data_dir or tfds.core.constants.DATA_DIR
  where = f"TFDS {cfg.tfds_name!r} in {data_dir}"
  splits = []
  for split in (cfg.tfds_train_split, cfg.tfds_test_split):
    try:
      ds = tfds.load(
        cfg.tfds_name,
        split=split,
        data_dir=cfg.tfds_data_dir or None,
        download=False,
      )
      # Chunked, not batch_size=-1: that needs a known cardinality, which mocked or
      # generated datasets may not have.
      chunks = list(
        tfds.as_numpy(ds.map(lambda ex: (ex["image"], ex["label"])).batch(8192))
      )
    except tfds.core.registered.DatasetNotFoundError as e:
      raise DataError(
        f"TFDS has no dataset named {cfg.tfds_name!r}; fix "
        "--config.data.tfds_name (e.g. cifar10, cifar100, fashion_mnist)."
      ) from e
    except Exception as e:  # pylint: disable=broad-except
      reason = str(e).splitlines()[0].rstrip(".") if str(e) else ""
      raise DataError(
        f"cannot load split {split!r} of {where}: {type(e).__name__}: {reason}; "
        f"nothing is downloaded here: run `tfds build {cfg.tfds_name} "
        "--data_dir=DIR` where there is network access (or copy a prepared build) "
        "and pass DIR as --config.data.tfds_data_dir."
      ) from e
    images = np.concatenate([c[0] for c in chunks])
    labels = np.concatenate([c[1] for c in chunks]).astype(np.int64)
    if images.ndim == 3:
      images = images[..., None]
    splits.append(
      (_validate(images, labels, cfg, f"{where} split {split!r}"), where)
    )
  return tuple(splits)


_READERS = {
  "digits": _read_digits,
  "idx": _read_idx_source,
  "cifar10": _read_cifar,
  "cifar100": _read_cifar,
  "tfds": _read_tfds,
}
