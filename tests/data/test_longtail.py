"""The long-tailed protocol against the published CIFAR-LT numbers and a hand-worked case."""

import numpy as np
import pytest

from lcreg_jax.data import longtail


def _balanced_labels(num_classes, per_class, seed=1):
  # Shuffled like the real CIFAR files, so that selection has to find each class's members.
  return np.random.RandomState(seed).permutation(
    np.repeat(np.arange(num_classes), per_class)
  )


def test_lt_counts_cifar10_if100_profile():
  np.testing.assert_array_equal(
    longtail.lt_counts(5000, 10, 100),
    [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50],
  )
  assert longtail.lt_counts(5000, 10, 100).dtype == np.int64
  np.testing.assert_array_equal(longtail.lt_counts(7, 3, 1), [7, 7, 7])


@pytest.mark.parametrize(
  "num_classes,totals",
  [(10, (12406, 13996, 20431)), (100, (10847, 12608, 19573))],
)
def test_lt_indices_published_totals(num_classes, totals):
  labels = _balanced_labels(num_classes, 50000 // num_classes)
  for imbalance, total in zip((100, 50, 10), totals):
    idx = longtail.lt_indices(labels, imbalance)
    assert len(idx) == total
    assert len(np.unique(idx)) == total
    counts = np.bincount(labels[idx], minlength=num_classes)
    np.testing.assert_array_equal(
      counts, longtail.lt_counts(50000 // num_classes, num_classes, imbalance)
    )


def test_lt_indices_cifar10_if100_counts_and_class_blocks():
  labels = _balanced_labels(10, 5000)
  idx = longtail.lt_indices(labels, 100)
  selected = labels[idx]
  np.testing.assert_array_equal(
    np.bincount(selected), [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
  )
  # Concatenated class by class: labels are non-decreasing.
  assert (np.diff(selected) >= 0).all()


def test_larger_imbalance_subsets_are_per_class_prefixes():
  labels = _balanced_labels(10, 5000)
  base = longtail.lt_indices(labels, 10)
  for imbalance in (50, 100):
    sub = longtail.lt_indices(labels, imbalance)
    for c in range(10):
      in_sub, in_base = sub[labels[sub] == c], base[labels[base] == c]
      np.testing.assert_array_equal(in_sub, in_base[: len(in_sub)])


def test_lt_indices_hand_worked_case():
  # Class 0 at [1, 3, 4, 7], class 1 at [0, 2, 5, 6]; IF 2 keeps 4 and int(4 * 0.5) = 2.
  # RandomState(0) shuffles the first list to [4, 7, 3, 1], then the second to [0, 5, 2, 6].
  labels = np.array([1, 0, 1, 0, 0, 1, 1, 0])
  np.testing.assert_array_equal(
    longtail.lt_indices(labels, 2), [4, 7, 3, 1, 0, 5]
  )
  # The same from an independent formulation: one permutation draw per class, in class order.
  rng = np.random.RandomState(0)
  expected = np.concatenate(
    [
      np.array([1, 3, 4, 7])[rng.permutation(4)],
      np.array([0, 2, 5, 6])[rng.permutation(4)][:2],
    ]
  )
  np.testing.assert_array_equal(longtail.lt_indices(labels, 2), expected)
  # The seed is honoured.
  assert not np.array_equal(
    longtail.lt_indices(labels, 1, seed=1), longtail.lt_indices(labels, 1)
  )


def test_n_max_is_smallest_class_count():
  labels = np.array([0] * 10 + [1] * 6 + [2] * 8)
  np.testing.assert_array_equal(
    np.bincount(labels[longtail.lt_indices(labels, 1)]), [6, 6, 6]
  )


@pytest.mark.parametrize(
  "labels,imbalance,match",
  [
    (np.array([0, 1, 1]), 0.5, "imbalance_factor"),
    (np.array([[0, 1]]), 10, "1-D integer"),
    (np.array([0.0, 1.0]), 10, "1-D integer"),
    (np.array([0, 2, 2]), 10, r"classes \[1\] have no samples"),
  ],
)
def test_lt_indices_errors(labels, imbalance, match):
  with pytest.raises(ValueError, match=match):
    longtail.lt_indices(labels, imbalance)


def test_shot_groups_boundaries():
  groups = longtail.shot_groups([19, 20, 100, 101, 5000, 0])
  np.testing.assert_array_equal(groups, [2, 1, 1, 0, 0, 2])
  np.testing.assert_array_equal(
    longtail.shot_groups([10, 11, 50, 51], 50, 11), [2, 1, 1, 0]
  )
  assert [longtail.GROUP_NAMES[g] for g in groups[:4]] == [
    "few",
    "medium",
    "medium",
    "many",
  ]
