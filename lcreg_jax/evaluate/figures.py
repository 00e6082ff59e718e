"""Figures of a finished run, for notebooks and the saved plots: class
counts, per-class accuracy against training count, reliability diagrams,
the latent categories as in the paper's Figure 4, and DLSA's routing.

The functions that compute (`per_class_accuracy`, `latent_weights`,
`latent_usage_by_class`) are plain NumPy; the `*_figure` ones draw them and
return a matplotlib Figure (shown inline by a notebook, saved by `plots`).
"""

import numpy as np

from lcreg_jax.evaluate import metrics
from lcreg_jax.evaluate.metrics import reliability_bins


def _pyplot():
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt


# metrics' own, offered here beside its figure.
per_class_accuracy = metrics.per_class_accuracy


def latent_weights(assignments) -> np.ndarray:
  """(N, M) share of each image's positions given to each latent category:
  the mean of its (N, H, W, M) assignment maps over H and W (sums to 1)."""
  a = np.asarray(assignments, np.float64)
  return a.reshape(a.shape[0], -1, a.shape[-1]).mean(1)


def latent_usage_by_class(assignments, labels, num_classes: int) -> np.ndarray:
  """(C, M): the mean latent weights of the images of each class (rows sum
  to 1; NaN for a class with no image). Columns shared by head and tail
  classes are the "parts" tail classes borrow."""
  w = latent_weights(assignments)
  labels = np.asarray(labels)
  return np.stack(
    [
      w[labels == c].mean(0)
      if (labels == c).any()
      else np.full(w.shape[1], np.nan)
      for c in range(num_classes)
    ]
  )


def draw_reliability(ax, probs, labels, num_bins: int = 15, title=None):
  """Accuracy per confidence bin against the diagonal."""
  acc, _ = reliability_bins(probs, labels, num_bins)
  centres = (np.arange(num_bins) + 0.5) / num_bins
  ax.bar(
    centres,
    np.nan_to_num(acc),
    width=1 / num_bins,
    edgecolor='k',
    label='accuracy',
  )
  ax.plot([0, 1], [0, 1], 'r--', label='perfect calibration')
  ax.set(
    xlabel='confidence',
    ylabel='accuracy',
    xlim=(0, 1),
    ylim=(0, 1),
    title=title or 'Reliability diagram',
  )
  ax.legend(loc='upper left')


def draw_per_class_accuracy(ax, class_counts, accuracies: dict):
  """One series per entry of {name: (C,) accuracies} against the count."""
  counts = np.asarray(class_counts)
  for name, acc in accuracies.items():
    order = np.argsort(counts)
    ax.plot(counts[order], np.asarray(acc)[order], 'o-', label=name)
  ax.set(
    xscale='log',
    xlabel='training images of the class',
    ylabel='test accuracy',
    title='Per-class accuracy',
  )
  if len(accuracies) > 1:
    ax.legend()


def class_counts_figure(train_counts, test_counts, class_names=None):
  """Bar charts of the long-tailed training set and the test set."""
  plt = _pyplot()
  names = class_names or [str(c) for c in range(len(train_counts))]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3), sharey=False)
  for ax, counts, title in (
    (axes[0], train_counts, 'training set'),
    (axes[1], test_counts, 'test set'),
  ):
    ax.bar(names, counts)
    ax.set(
      title=f'{title}: {int(np.sum(counts))} images',
      xlabel='class',
      ylabel='images',
    )
  fig.tight_layout()
  return fig


def per_class_accuracy_figure(class_counts, accuracies: dict):
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  draw_per_class_accuracy(ax, class_counts, accuracies)
  fig.tight_layout()
  return fig


def reliability_figure(predictions: dict, num_bins: int = 15):
  """Side by side, one diagram per entry of {name: (probs, labels)}."""
  plt = _pyplot()
  fig, axes = plt.subplots(
    1, len(predictions), figsize=(4 * len(predictions), 4), squeeze=False
  )
  for ax, (name, (probs, labels)) in zip(axes[0], predictions.items()):
    draw_reliability(ax, probs, labels, num_bins, title=name)
  fig.tight_layout()
  return fig


def _show_image(ax, image):
  image = np.asarray(image, np.float64)
  lo, hi = image.min(), image.max()
  image = (image - lo) / (hi - lo if hi > lo else 1.0)  # normalised input
  ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap='gray')
  ax.set_xticks([])
  ax.set_yticks([])


def latent_maps_figure(
  images, labels, assignments, top_k: int = 3, class_names=None, caption=None
):
  """The paper's Figure 4 for a few images: each row shows the image, its
  top-k latent categories' assignment maps over the feature map (the map's
  cells stretched over the image), and the histogram of its latent weights
  (dashed: the uniform 1/M).

  The colours of a row span its maps' own range (LCReg's sigmoid-then-
  softmax assignment stays within a factor e of uniform at τ = 1, so a
  0-to-1 scale would show nothing); the titles give each latent's weight."""
  plt = _pyplot()
  images, assignments = np.asarray(images), np.asarray(assignments)
  weights = latent_weights(assignments)
  n, m = len(images), assignments.shape[-1]
  fig, axes = plt.subplots(
    n, top_k + 2, figsize=(2.2 * (top_k + 2) + 2, 2.2 * n), squeeze=False
  )
  ih, iw = images.shape[1:3]
  for i in range(n):
    name = class_names[labels[i]] if class_names is not None else str(labels[i])
    _show_image(axes[i, 0], images[i])
    axes[i, 0].set_title(
      f'class {name}' + (f' ({caption[i]})' if caption is not None else '')
    )
    top = np.argsort(-weights[i])[:top_k]
    lo, hi = assignments[i][..., top].min(), assignments[i][..., top].max()
    for j, k in enumerate(top):
      ax = axes[i, j + 1]
      _show_image(ax, images[i])
      ax.imshow(
        assignments[i, :, :, k],
        cmap='magma',
        alpha=0.6,
        vmin=lo,
        vmax=max(hi, lo + 1e-6),
        extent=(-0.5, iw - 0.5, ih - 0.5, -0.5),
        interpolation='nearest',
      )
      ax.set_title(f'latent {k}: {100 * weights[i, k]:.0f}%')
    ax = axes[i, -1]
    ax.bar(np.arange(m), weights[i], color='tab:purple')
    ax.axhline(1 / m, color='k', ls='--', lw=1)
    ax.set(xlabel='latent category', ylabel='weight')
  fig.tight_layout()
  return fig


def latent_classes_figure(usage, class_counts, class_names=None):
  """(C, M) class-by-latent usage as a heat map, classes from head (top)
  to tail (bottom)."""
  plt = _pyplot()
  usage, counts = np.asarray(usage), np.asarray(class_counts)
  order = np.argsort(-counts, kind='stable')
  names = class_names or [str(c) for c in range(len(counts))]
  fig, ax = plt.subplots(figsize=(min(14, 2 + 0.35 * usage.shape[1]), 4))
  im = ax.imshow(usage[order], aspect='auto', cmap='viridis')
  ax.set_yticks(range(len(order)))
  ax.set_yticklabels([f'{names[c]} ({counts[c]})' for c in order])
  ax.set(
    xlabel='latent category',
    ylabel='class (training images)',
    title='Mean latent weights of each class\'s test images',
  )
  fig.colorbar(im, ax=ax)
  fig.tight_layout()
  return fig


def routing_figure(routing: dict):
  """DLSA: share of the test set each routing stage handled, and its
  top-1 there."""
  plt = _pyplot()
  stages = sorted(routing, key=int)
  names = [
    f'stage {s}' if i < len(stages) - 1 else 'final'
    for i, s in enumerate(stages)
  ]
  share = [100 * routing[s]['share'] for s in stages]
  acc = [100 * (routing[s].get('accuracy') or np.nan) for s in stages]
  fig, axes = plt.subplots(1, 2, figsize=(8, 3))
  axes[0].bar(names, share)
  axes[0].set(ylabel='% of test images', title='Routed to')
  axes[1].bar(names, acc, color='tab:green')
  axes[1].set(ylabel='top-1 %', ylim=(0, 100), title='Accuracy there')
  fig.tight_layout()
  return fig
