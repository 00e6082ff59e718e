"""Collects report.json files of several workdirs into one Markdown table.

  python benchmarks/collect_results.py NAME=WORKDIR[,WORKDIR...] ...

Each NAME gets one row per stage found; with several workdirs (seeds) the
cells are mean ± std over them.
"""

import sys

import numpy as np

from lcreg_jax import files

# dlsa_depth0: DLSA's depth-0 control (the final classifier alone).
STAGES = ('stage1', 'stage2', 'dlsa', 'dlsa_depth0')
# top1_best_val: test top-1 of the stage's best-on-validation parameters
# (runs with a validation split; '-' otherwise).
COLS = ('top1', 'many', 'medium', 'few', 'ece', 'nll', 'top1_best_val')


def _cell(values, col):
  values = [v for v in values if v is not None]
  if not values:
    return '-'
  scale = 1 if col == 'nll' else 100
  fmt = '{:.3f}' if col == 'nll' else '{:.2f}'
  mean = fmt.format(scale * np.mean(values))
  if len(values) == 1:
    return mean
  return f'{mean} ± {fmt.format(scale * np.std(values, ddof=1))}'


def table(runs) -> str:
  """The Markdown table of `runs`, (name, [workdir, ...]) pairs: one row
  per name and stage found, mean ± sample std over the workdirs."""
  lines = ['| method | stage | runs | ' + ' | '.join(COLS) + ' |',
           '|---|---|---|' + '---|' * len(COLS)]
  for name, dirs in runs:
    for stage in STAGES:
      reports = [files.read_json(files.as_path(d) / stage / 'report.json')
                 for d in dirs
                 if (files.as_path(d) / stage / 'report.json').exists()]
      if reports:
        cells = [_cell([r.get(c) for r in reports], c) for c in COLS]
        lines.append(f'| {name} | {stage} | {len(reports)} | '
                     + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main(args):
  runs = []
  for arg in args:
    # The workdirs follow the last '=' (names may contain one).
    name, dirs = arg.rsplit('=', 1)
    runs.append((name, dirs.split(',')))
  print(table(runs))


if __name__ == '__main__':
  main(sys.argv[1:])
