"""Post-hoc classifier adjustments with τ chosen on validation (docs/method.md §8).

τ-normalisation rescales the classifier's columns, post-hoc logit adjustment
subtracts τ log π_c from the logits; both pick τ from a grid by top-1 on the
validation split. The choice only ever sees validation outputs: test
outputs are adjusted with the chosen τ afterwards, never consulted.
"""

import numpy as np

from lcreg_jax import losses
from lcreg_jax.models import heads


def tau_grid(tau_max: float, tau_step: float) -> np.ndarray:
  """0, step, 2 step, ..., up to tau_max (inclusive, up to rounding)."""
  n = int(np.floor(tau_max / tau_step + 1e-9))
  return np.round(np.arange(n + 1) * tau_step, 10)


def log_prior(class_counts) -> np.ndarray:
  """log π_c with π_c = n_c / N, the training prior."""
  counts = np.asarray(class_counts, np.float64)
  return np.log(counts / counts.sum())


def logit_adjusted(logits, class_counts, tau: float) -> np.ndarray:
  """z_c - τ log π_c: its argmax is the prediction, its softmax the
  reported probabilities."""
  return np.asarray(logits) - tau * log_prior(class_counts)


def tau_normalized_logits(features, kernel, tau: float) -> np.ndarray:
  """Logits of the τ-normalised classifier, bias dropped."""
  return np.asarray(features) @ np.asarray(heads.tau_normalize(
      np.asarray(kernel), tau))


def choose_tau(logits_at, labels, grid) -> tuple[float, np.ndarray]:
  """The τ of `grid` whose logits_at(τ) have the best top-1 on `labels`.

  Args:
    logits_at: τ -> (N, C) logits of the validation split.
    labels: (N,) validation labels.
    grid: candidate values of τ.
  Returns:
    (τ, top-1 per candidate); ties go to the smallest τ (the least change).
  """
  labels = np.asarray(labels)
  acc = np.array([losses.top1(np.asarray(logits_at(t)), labels)
                  for t in grid])
  return float(grid[int(np.argmax(acc))]), acc
