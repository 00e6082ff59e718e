"""Plots of a stage's test predictions (docs/method.md §7): reliability diagram,
per-class accuracy against training count, latent-category usage."""

import numpy as np

from lcreg_jax import files
from lcreg_jax.evaluate import figures


def _save(fig, path):
  # Through epath, so the folder may be gs://...; PNG bytes in one write.
  with path.open('wb') as f:
    fig.savefig(f, format='png', dpi=100)


def save_plots(
  directory, probs, labels, class_counts, latent_usage=None, num_bins: int = 15
):
  """Reliability diagram, per-class accuracy vs count, latent usage."""
  # Figures without pyplot: no backend is chosen or changed, so saving the
  # plots inside a notebook leaves its inline figures alone.
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  directory = files.as_path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  probs = np.asarray(probs)
  labels = np.asarray(labels)

  fig = Figure(figsize=(4, 4))
  ax = fig.subplots()
  figures.draw_reliability(ax, probs, labels, num_bins)
  fig.tight_layout()
  _save(fig, directory / 'reliability.png')

  fig = Figure(figsize=(5, 3.5))
  ax = fig.subplots()
  figures.draw_per_class_accuracy(
    ax,
    class_counts,
    {'test': figures.per_class_accuracy(probs, labels, len(class_counts))},
  )
  fig.tight_layout()
  _save(fig, directory / 'per_class_accuracy.png')

  if latent_usage is not None:
    usage = np.asarray(latent_usage, np.float64)
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    ax.bar(np.arange(len(usage)), usage / max(usage.sum(), 1))
    ax.set(
      xlabel='latent category',
      ylabel='share of positions',
      title='Latent-category usage',
    )
    fig.tight_layout()
    _save(fig, directory / 'latent_usage.png')
