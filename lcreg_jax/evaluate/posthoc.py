"""Post-hoc classifier adjustments with τ chosen on validation (docs/method.md §8).

τ-normalisation rescales the classifier's columns, post-hoc logit adjustment
subtracts τ log π_c from the logits; both pick τ from a grid by the
validation score `eval.select_metric` names (by default the mean of
per-class top-1, as classifier-balancing does: the test set is balanced, a
carved validation split is not). The choice only ever sees validation
outputs: test outputs are adjusted with the chosen τ afterwards, never
consulted.
"""

import numpy as np

from lcreg_jax import loop
from lcreg_jax.evaluate import metrics
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
  return np.asarray(features) @ np.asarray(
    heads.tau_normalize(np.asarray(kernel), tau)
  )


def choose_tau(
  logits_at, labels, grid, num_classes: int, metric: str
) -> tuple[int, dict]:
  """The τ of `grid` whose logits_at(τ) score best on `labels` by `metric`.

  Args:
    logits_at: τ -> (N, C) logits of the validation split.
    labels: (N,) validation labels.
    grid: candidate values of τ.
    num_classes: C.
    metric: eval.select_metric: 'class_mean' (the mean of per-class top-1,
      as classifier-balancing scores τ) or 'image_mean' (top-1).
  Returns:
    (index of the chosen τ in `grid`, curves): curves maps both score
    names ('top1', 'class_mean_top1') to their value per candidate. Ties
    go to the smallest τ (the least change).
  """
  rows = [
    metrics.validation_scores(logits_at(t), labels, num_classes) for t in grid
  ]
  curves = {k: np.array([r[k] for r in rows]) for k in rows[0]}
  # The loop's selection rule (strictly better in float32): scores equal
  # but for rounding, e.g. the same per-class accuracies summed in another
  # order, tie, so a balanced split chooses as top-1 does.
  choice = loop.Selection.start(None, None)
  for i, score in enumerate(curves[metrics.SELECT_SCORES[metric]]):
    choice = choice.offer(i, i, score)
  return choice.best, curves
