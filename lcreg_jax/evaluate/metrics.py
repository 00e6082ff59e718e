"""Evaluation metrics (docs/method.md §7): top-1, per-class and shot-group accuracy,
ECE/MCE and NLL, computed in float64 NumPy."""

import numpy as np
import scipy.special

from lcreg_jax import losses
from lcreg_jax.data import longtail


def _bin_index(conf, num_bins):
  # searchsorted 'left' on the edges gives edges[i-1] < conf <= edges[i]:
  # right-closed bins that agree with the float edges themselves.
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  return np.clip(np.searchsorted(edges, conf, side='left') - 1, 0, num_bins - 1)


def calibration(probs, labels, num_bins: int = 15):
  """Expected and maximum calibration error on the max probability.

  Bins are equal-width and right-closed, (b/n, (b+1)/n], so a confidence of
  exactly 1 falls in the last bin. ECE weights each bin's |acc - conf| by its
  share of samples; MCE is the largest gap over non-empty bins.
  """
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels)
  conf = probs.max(-1)
  correct = (probs.argmax(-1) == labels).astype(np.float64)
  bins = _bin_index(conf, num_bins)
  ece, mce = 0.0, 0.0
  for b in range(num_bins):
    sel = bins == b
    if not sel.any():
      continue
    gap = abs(correct[sel].mean() - conf[sel].mean())
    ece += sel.mean() * gap
    mce = max(mce, gap)
  return float(ece), float(mce)


def reliability_bins(probs, labels, num_bins: int = 15):
  conf = probs.max(-1)
  correct = probs.argmax(-1) == labels
  bins = _bin_index(conf, num_bins)
  acc = np.array(
    [
      correct[bins == b].mean() if (bins == b).any() else np.nan
      for b in range(num_bins)
    ]
  )
  count = np.bincount(bins, minlength=num_bins)
  return acc, count


def per_class_accuracy(probs, labels, num_classes: int) -> np.ndarray:
  """(C,) top-1 accuracy of each class; NaN for a class with no example."""
  labels = np.asarray(labels)
  correct = np.asarray(probs).argmax(-1) == labels
  return np.array(
    [
      correct[labels == c].mean() if (labels == c).any() else np.nan
      for c in range(num_classes)
    ]
  )


# eval.select_metric -> the name of its validation score in reports
# ('val_<name>').
SELECT_SCORES = {'class_mean': 'class_mean_top1', 'image_mean': 'top1'}


def validation_scores(scores, labels, num_classes: int) -> dict:
  """The scores a choice on validation can be made by, under their report
  names: top-1 over images and the mean of per-class top-1."""
  scores, labels = np.asarray(scores), np.asarray(labels)
  return dict(
    top1=float(losses.top1(scores, labels)),
    class_mean_top1=losses.class_mean_top1(scores, labels, num_classes),
  )


def compute_metrics(
  logits_or_probs,
  labels,
  class_counts,
  *,
  many_threshold=100,
  few_threshold=20,
  num_bins=15,
  are_probs: bool = False,
) -> dict:
  """Top-1, per-class and shot-group accuracy, ECE, MCE and NLL."""
  x = np.asarray(logits_or_probs, np.float64)
  labels = np.asarray(labels)
  if are_probs:
    logp = np.log(np.clip(x, 1e-12, None))
  else:
    logp = scipy.special.log_softmax(x, axis=-1)
  probs = np.exp(logp)
  per_class = per_class_accuracy(probs, labels, len(class_counts))
  groups = longtail.shot_groups(class_counts, many_threshold, few_threshold)
  out = dict(
    top1=float(losses.top1(probs, labels)),
    nll=float(-logp[np.arange(len(labels)), labels].mean()),
    per_class_accuracy=[float(a) for a in per_class],
    num_examples=int(len(labels)),
  )
  for g, name in enumerate(longtail.GROUP_NAMES):
    vals = per_class[(groups == g) & ~np.isnan(per_class)]
    out[name] = float(vals.mean()) if len(vals) else None
    out[f'{name}_num_classes'] = int((groups == g).sum())
  out['ece'], out['mce'] = calibration(probs, labels, num_bins)
  return out
