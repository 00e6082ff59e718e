"""DLSA routing by flow likelihood (docs/method.md §6): which samples each stage's
classifier takes, and the cluster prior it is given."""

import math

import numpy as np


def num_routed(n: int, fraction: float) -> int:
  """Training samples a stage takes out of n remaining ones.

  min(ceil(fraction · n), n - 1), clipped at 0: never all of them, so the
  final classifier always keeps training data (a stage that gets 0 is
  skipped). The 1e-9 guard keeps 0.3 · 10 = 3.0000000000000004 at 3.
  """
  k = int(math.ceil(fraction * n - 1e-9))
  return max(0, min(k, n - 1))


def route_stage(logp: np.ndarray, remaining: np.ndarray, fraction: float):
  """Picks the top-`fraction` of the remaining training samples by log p.

  Args:
    logp: (N,) log-likelihoods of all training samples.
    remaining: (N,) bool, samples not yet routed by earlier stages.
    fraction: share of the remaining samples this stage takes.
  Returns:
    (routed (N,) bool, threshold). Exactly num_routed(remaining.sum()) samples
    are routed (ties broken by index); threshold is the lowest routed log p,
    and val/test samples route with log p >= threshold.
  """
  idx = np.flatnonzero(remaining)
  k = num_routed(idx.size, fraction)
  routed = np.zeros_like(remaining, dtype=bool)
  if k == 0:
    return routed, np.inf
  order = np.argsort(-logp[idx], kind='stable')[:k]
  routed[idx[order]] = True
  return routed, float(logp[idx[order[-1]]])


def route_by_threshold(
  logp: np.ndarray, remaining: np.ndarray, threshold: float
) -> np.ndarray:
  """Val/test routing: the same log-p threshold as training."""
  return remaining & (logp >= threshold)


def cluster_prior_matrix(
  clusters: np.ndarray, labels: np.ndarray, num_clusters: int, num_classes: int
) -> np.ndarray:
  """(K, C) row-normalised class histograms of the routed training samples.

  Clusters that received no routed training sample get an all-zero row:
  the classifier then sees "no cluster evidence" (the authors' convention).
  """
  h = np.zeros((num_clusters, num_classes), np.float64)
  np.add.at(h, (clusters, labels), 1.0)
  s = h.sum(1, keepdims=True)
  return (h / np.maximum(s, 1.0)).astype(np.float32)
