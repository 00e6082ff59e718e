"""Evaluation (DESIGN §7): metrics, JSON reports and plots."""

import json
import os

import numpy as np
import scipy.special

from lcreg_jax.data import longtail


def _bin_index(conf, num_bins):
  # searchsorted 'left' on the edges gives edges[i-1] < conf <= edges[i]:
  # right-closed bins that agree with the float edges themselves.
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  return np.clip(np.searchsorted(edges, conf, side='left') - 1, 0,
                 num_bins - 1)


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
  acc = np.array([correct[bins == b].mean() if (bins == b).any() else np.nan
                  for b in range(num_bins)])
  count = np.bincount(bins, minlength=num_bins)
  return acc, count


def compute_metrics(logits_or_probs, labels, class_counts, *,
                    many_threshold=100, few_threshold=20, num_bins=15,
                    are_probs: bool = False) -> dict:
  """Top-1, per-class and shot-group accuracy, ECE, MCE and NLL."""
  x = np.asarray(logits_or_probs, np.float64)
  labels = np.asarray(labels)
  if are_probs:
    logp = np.log(np.clip(x, 1e-12, None))
  else:
    logp = scipy.special.log_softmax(x, axis=-1)
  probs = np.exp(logp)
  num_classes = len(class_counts)
  pred = probs.argmax(-1)
  correct = pred == labels
  per_class = np.array([correct[labels == c].mean() if (labels == c).any()
                        else np.nan for c in range(num_classes)])
  groups = longtail.shot_groups(class_counts, many_threshold, few_threshold)
  out = dict(
      top1=float(correct.mean()),
      nll=float(-logp[np.arange(len(labels)), labels].mean()),
      per_class_accuracy=[float(a) for a in per_class],
      num_examples=int(len(labels)))
  for g, name in enumerate(longtail.GROUP_NAMES):
    vals = per_class[(groups == g) & ~np.isnan(per_class)]
    out[name] = float(vals.mean()) if len(vals) else None
    out[f'{name}_num_classes'] = int((groups == g).sum())
  out['ece'], out['mce'] = calibration(probs, labels, num_bins)
  return out


def _json_safe(x):
  # NaN/inf are not JSON; null keeps the report readable by any parser.
  if isinstance(x, dict):
    return {str(k): _json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_safe(v) for v in x]
  if isinstance(x, (float, np.floating)):
    return float(x) if np.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  return x


def write_report(path: str, report: dict):
  """Writes JSON atomically (a crash never leaves half a report)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(_json_safe(report), f, indent=2)
  os.replace(tmp, path)


def save_plots(directory: str, probs, labels, class_counts,
               latent_usage=None, num_bins: int = 15):
  """Reliability diagram, per-class accuracy vs count, latent usage."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
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
  fig.savefig(os.path.join(directory, 'reliability.png'), dpi=100)
  plt.close(fig)

  correct = probs.argmax(-1) == labels
  per_class = [correct[labels == c].mean() if (labels == c).any() else np.nan
               for c in range(len(class_counts))]
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.scatter(class_counts, per_class)
  ax.set(xscale='log', xlabel='training images of the class',
         ylabel='test accuracy', title='Per-class accuracy')
  fig.tight_layout()
  fig.savefig(os.path.join(directory, 'per_class_accuracy.png'), dpi=100)
  plt.close(fig)

  if latent_usage is not None:
    usage = np.asarray(latent_usage, np.float64)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(np.arange(len(usage)), usage / max(usage.sum(), 1))
    ax.set(xlabel='latent category', ylabel='share of positions',
           title='Latent-category usage')
    fig.tight_layout()
    fig.savefig(os.path.join(directory, 'latent_usage.png'), dpi=100)
    plt.close(fig)


def format_routing(routing: dict) -> str:
  """DLSA: share and accuracy of the test samples each stage handled."""
  parts = []
  for stage, r in sorted(routing.items(), key=lambda kv: int(kv[0])):
    name = f'stage {stage}' if int(stage) < len(routing) - 1 else 'final'
    acc = '-' if r.get('accuracy') is None else f'{100 * r["accuracy"]:.1f}%'
    parts.append(f'{name}: {100 * r["share"]:.1f}% of test, top-1 {acc}')
  return 'DLSA routing: ' + '; '.join(parts)


def format_table(rows: dict[str, dict]) -> str:
  """A small text table of the headline numbers, one row per stage."""
  cols = ['top1', 'many', 'medium', 'few', 'ece', 'nll']
  lines = ['| stage | ' + ' | '.join(cols) + ' |',
           '|---|' + '---|' * len(cols)]
  for name, m in rows.items():
    cells = []
    for c in cols:
      v = m.get(c)
      if v is None:
        cells.append('-')
      elif c in ('top1', 'many', 'medium', 'few', 'ece'):
        cells.append(f'{100 * v:.2f}')
      else:
        cells.append(f'{v:.3f}')
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)
