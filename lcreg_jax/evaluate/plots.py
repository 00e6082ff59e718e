"""Plots of a stage's test predictions (DESIGN §7): reliability diagram,
per-class accuracy against training count, latent-category usage."""

import numpy as np

from lcreg_jax import files
from lcreg_jax.evaluate.metrics import reliability_bins


def _save(fig, path):
  # Through epath, so the folder may be gs://...; PNG bytes in one write.
  with path.open('wb') as f:
    fig.savefig(f, format='png', dpi=100)


def save_plots(directory, probs, labels, class_counts,
               latent_usage=None, num_bins: int = 15):
  """Reliability diagram, per-class accuracy vs count, latent usage."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  directory = files.as_path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  probs = np.asarray(probs)
  labels = np.asarray(labels)

  acc, count = reliability_bins(probs, labels, num_bins)
  centres = (np.arange(num_bins) + 0.5) / num_bins
  fig, ax = plt.subplots(figsize=(4, 4))
  ax.bar(centres, np.nan_to_num(acc), width=1 / num_bins, edgecolor='k',
         label='accuracy')
  ax.plot([0, 1], [0, 1], 'r--', label='perfect calibration')
  ax.set(xlabel='confidence', ylabel='accuracy', title='Reliability diagram')
  ax.legend(loc='upper left')
  fig.tight_layout()
  _save(fig, directory / 'reliability.png')
  plt.close(fig)

  correct = probs.argmax(-1) == labels
  per_class = [correct[labels == c].mean() if (labels == c).any() else np.nan
               for c in range(len(class_counts))]
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.scatter(class_counts, per_class)
  ax.set(xscale='log', xlabel='training images of the class',
         ylabel='test accuracy', title='Per-class accuracy')
  fig.tight_layout()
  _save(fig, directory / 'per_class_accuracy.png')
  plt.close(fig)

  if latent_usage is not None:
    usage = np.asarray(latent_usage, np.float64)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(np.arange(len(usage)), usage / max(usage.sum(), 1))
    ax.set(xlabel='latent category', ylabel='share of positions',
           title='Latent-category usage')
    fig.tight_layout()
    _save(fig, directory / 'latent_usage.png')
    plt.close(fig)
