"""Long-tailed protocol of Cao et al. 2019 (LDAM-DRW, MiSLAS): counts, selection, shot groups.

Pure NumPy so that the protocol can be checked without TensorFlow or JAX.
"""

import numpy as np

GROUP_NAMES = ("many", "medium", "few")


def lt_counts(
  n_max: int, num_classes: int, imbalance_factor: float
) -> np.ndarray:
  """Exponential profile `n_i = int(n_max * (1/IF) ** (i / (C - 1)))`, head class first."""
  if imbalance_factor < 1:
    raise ValueError(
      f"imbalance_factor must be >= 1 (1 = balanced), got {imbalance_factor}."
    )
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
  if num_classes == 1:
    return np.array([n_max], dtype=np.int64)
  # Plain Python floats, as in the reference code: a vectorised power can differ in the last
  # bit and `int` truncation would then change a count by one.
  return np.array(
    [
      int(n_max * (1.0 / imbalance_factor) ** (i / (num_classes - 1.0)))
      for i in range(num_classes)
    ],
    dtype=np.int64,
  )


def lt_indices(labels, imbalance_factor: float, seed: int = 0) -> np.ndarray:
  """Indices into `labels` of the long-tailed subset, class by class (docs/method.md §1).

  n_max is the smallest per-class count present (50000 / C for CIFAR). Every class is
  shuffled, the head class too, because each shuffle advances the shared generator; the
  permutation of a class therefore does not depend on the imbalance factor, which makes the
  subsets for larger factors per-class prefixes of those for smaller ones.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
      f"labels must be a 1-D integer array, got shape {labels.shape} "
      f"and dtype {labels.dtype}."
    )
  if labels.size == 0 or labels.min() < 0:
    raise ValueError("labels must be non-empty and non-negative.")
  if imbalance_factor < 1:
    raise ValueError(
      f"imbalance_factor must be >= 1 (1 = balanced), got {imbalance_factor}."
    )
  present = np.bincount(labels)
  if (present == 0).any():
    raise ValueError(
      f"classes {np.flatnonzero(present == 0).tolist()} have no samples; "
      "every class 0..max(label) needs at least one."
    )
  counts = lt_counts(int(present.min()), len(present), imbalance_factor)
  rng = np.random.RandomState(seed)
  parts = []
  for c, n_c in enumerate(counts):
    idx = np.where(labels == c)[0]
    rng.shuffle(idx)
    parts.append(idx[:n_c])
  return np.concatenate(parts).astype(np.int64)


def shot_groups(
  class_counts, many_threshold: int = 100, few_threshold: int = 20
) -> np.ndarray:
  """Group per class: 0 many (n > many), 1 medium (few <= n <= many), 2 few (n < few)."""
  n = np.asarray(class_counts)
  return np.where(
    n > many_threshold, 0, np.where(n >= few_threshold, 1, 2)
  ).astype(np.int64)
