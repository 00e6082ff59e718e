"""What DLSA's routing does per class, over runs: from each workdir's
`dlsa/report.json` (its per-class routing) and `dlsa_depth0/report.json`.

  python benchmarks/dlsa_routing.py workdirs/parity/seed_*/ours/run

prints, per class, the mean over the workdirs of:
the share of its training samples and of its test samples the first
routing stage took, the final classifier's top-1 on the test samples left
to it, DLSA's per-class top-1 and the depth-0 control's, in %. docs/dlsa.md
explains the rare-class rows with it.
"""

import argparse
import json
import os

import numpy as np


def _load(path):
  with open(path) as f:
    return json.load(f)


def _mean(rows):
  arr = np.array([[np.nan if v is None else v for v in r] for r in rows])
  return np.nanmean(arr, 0) if len(arr) else arr


def routing_table(workdirs) -> str:
  rows = {k: [] for k in ('train', 'test', 'final', 'dlsa', 'control')}
  for w in workdirs:
    rep = _load(os.path.join(w, 'dlsa', 'report.json'))
    routing = rep['routing']
    first, last = routing['0'], routing[str(len(routing) - 1)]
    if 'train_share_by_class' not in first:
      continue  # a report from before the per-class routing
    rows['train'].append(first['train_share_by_class'])
    rows['test'].append(first['test_share_by_class'])
    rows['final'].append(last['test_accuracy_by_class'])
    rows['dlsa'].append(rep['per_class_accuracy'])
    control = _load(os.path.join(w, 'dlsa_depth0', 'report.json'))
    rows['control'].append(control['per_class_accuracy'])
  n = len(rows['train'])
  if not n:
    raise SystemExit(
      'error: no workdir has a DLSA report with per-class '
      'routing (dlsa/report.json, routing.0.'
      'train_share_by_class); run DLSA with this version.'
    )
  means = {k: 100 * _mean(v) for k, v in rows.items()}
  head = (
    '| class | stage 0 takes, train % | test % | final '
    'classifier top-1 on the rest | DLSA top-1 | control top-1 |'
  )
  out = [f'{n} runs', '', head, '|' + '---|' * 6]
  for c in range(len(means['train'])):
    cells = [
      f'{means[k][c]:.1f}' if np.isfinite(means[k][c]) else '-'
      for k in ('train', 'test', 'final', 'dlsa', 'control')
    ]
    out.append(f'| {c} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(out)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('workdirs', nargs='+', help='run workdirs with DLSA')
  print(routing_table(p.parse_args(argv).workdirs))


if __name__ == '__main__':
  main()
