"""Reading each side's results and the side-by-side table: pure functions
(no torch, no JAX), tested on captured log lines and against NumPy."""

import json
import math
import os
import re

import numpy as np

# MiSLAS's validate() logs, once per epoch on the test split,
# '* Acc@1 61.810% Acc@5 99.1% HAcc ...'.
_MISLAS_ACC1 = re.compile(r'\* Acc@1 (-?[0-9.]+)% Acc@5')
# DLSA's solvers log '[regcls] Best epoch: 45, Test [45] 71.230 / ...'
# through a logger that prints it twice: bare and, through the root logger,
# after a '[date time] ' stamp; only the stamped line counts.
_DLSA_BEST = re.compile(
  r'^\[[^\]]+\] \[(cacls|regcls)\] Best epoch: '
  r'(\d+|None)',
  re.M,
)


def mislas_result(log_text: str, epochs: int) -> dict:
  """A MiSLAS stage's test top-1 (fraction) from its log: `top1` after the
  last epoch (what our report.json's top1 is) and `top1_best_test`, the
  best epoch's (what MiSLAS's 'Best Prec@1' reports: chosen on test).
  Raises ValueError unless the log has exactly `epochs` evaluations."""
  accs = [float(a) / 100 for a in _MISLAS_ACC1.findall(log_text)]
  if len(accs) != epochs:
    raise ValueError(
      f'the MiSLAS log has {len(accs)} test evaluations, '
      f'expected {epochs} (one per epoch): did the run stop '
      'early or change its log format?'
    )
  return {'top1': accs[-1], 'top1_best_test': max(accs), 'top1_per_epoch': accs}


def dlsa_chosen_epochs(log_text: str) -> dict:
  """{'cacls': [epochs], 'regcls': [epochs]}: the epochs DLSA's classifiers
  kept (one entry per classifier trained), from its log."""
  out = {'cacls': [], 'regcls': []}
  for name, epoch in _DLSA_BEST.findall(log_text):
    out[name].append(None if epoch == 'None' else int(epoch))
  return out


def dlsa_result(pred, labels_val, labels_test) -> dict:
  """Top-1 of predictions over the harness's "test" split ([validation;
  test] rows): `top1` on the test rows, `val_top1` on the validation rows."""
  pred = np.asarray(pred)
  n_val = len(labels_val)
  if pred.shape != (n_val + len(labels_test),):
    raise ValueError(
      f'{pred.shape[0]} predictions for {n_val} validation '
      f'and {len(labels_test)} test rows'
    )
  val = pred[:n_val] == np.asarray(labels_val)
  return {
    'top1': float(np.mean(pred[n_val:] == np.asarray(labels_test))),
    'val_top1': float(np.mean(val)) if n_val else None,
  }


def ours_result(workdir: str) -> dict:
  """{stage: top-1} of one of our runs from summary.json (and DLSA's
  control from dlsa_depth0/report.json)."""
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  out = {
    s: summary[s]['top1'] for s in ('stage1', 'stage2', 'dlsa') if s in summary
  }
  control = os.path.join(workdir, 'dlsa_depth0', 'report.json')
  if os.path.exists(control):
    with open(control) as f:
      out['dlsa_depth0'] = json.load(f)['top1']
  return out


def mean_std(values) -> tuple[float, float, int]:
  """Mean, sample standard deviation (ddof 1; NaN for one value), count."""
  v = np.asarray([x for x in values if x is not None], np.float64)
  if not v.size:
    return math.nan, math.nan, 0
  return (
    float(v.mean()),
    float(v.std(ddof=1)) if v.size > 1 else math.nan,
    int(v.size),
  )


def compare(ours, theirs) -> dict:
  """Ours against theirs over seeds: each side's mean ± std, the difference
  of means and its standard error sqrt(s_o²/n_o + s_t²/n_t) (independent
  samples), and the difference in standard errors."""
  mo, so, no = mean_std(ours)
  mt, st, nt = mean_std(theirs)
  diff = mo - mt
  se = math.sqrt(so**2 / no + st**2 / nt) if no > 1 and nt > 1 else math.nan
  return {
    'ours': (mo, so, no),
    'theirs': (mt, st, nt),
    'diff': diff,
    'se': se,
    'z': diff / se if se and se == se else math.nan,
  }


def paired(ours, theirs) -> dict:
  """As `compare`, for two sides that share each seed's start (e.g. both
  stage 2s from one stage-1 model): the difference is the mean per-seed
  difference and its standard error s_d / sqrt(n) over the seeds both
  have."""
  both = [(o, t) for o, t in zip(ours, theirs) if None not in (o, t)]
  out = compare([o for o, _ in both], [t for _, t in both])
  md, sd, n = mean_std([o - t for o, t in both])
  se = sd / math.sqrt(n) if n > 1 else math.nan
  return dict(out, diff=md, se=se, z=md / se if se and se == se else math.nan)


def _pct(mean, std=None) -> str:
  if mean != mean:
    return '-'
  text = f'{100 * mean:.2f}'
  return text if std is None or std != std else f'{text} ± {100 * std:.2f}'


def markdown_table(rows) -> str:
  """rows: (quantity, compare() dict) → the side-by-side Markdown table
  (top-1 in %, mean ± std over seeds)."""
  lines = [
    '| top-1 (%) | ours | authors\' code | seeds | ours − theirs | '
    'SE | within 2 SE |',
    '|---|---|---|---|---|---|---|',
  ]
  for name, c in rows:
    (mo, so, no), (mt, st, nt) = c['ours'], c['theirs']
    within = (
      '-'
      if c['se'] != c['se']
      else ('yes' if abs(c['diff']) <= 2 * c['se'] else 'no')
    )
    lines.append(
      f'| {name} | {_pct(mo, so)} | {_pct(mt, st)} | '
      f'{no} / {nt} | {_pct(c["diff"])} | {_pct(c["se"])} | '
      f'{within} |'
    )
  return '\n'.join(lines)


def deltas(a, b) -> list:
  """Per-seed a − b (None where either is missing)."""
  return [None if x is None or y is None else x - y for x, y in zip(a, b)]
