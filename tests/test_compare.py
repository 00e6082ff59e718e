"""benchmarks/compare.py on tiny runs: 2 methods × 2 seeds, crt on the ce
run's stage 1, the table equal to the reports' mean ± sample std, and a
second invocation that trains nothing."""

import json
import statistics
import subprocess
import sys

import pytest

from tests import cli

pytestmark = pytest.mark.slow


def _compare(root):
  return subprocess.run(
    [
      sys.executable,
      'benchmarks/compare.py',
      '--methods=crt,ce',
      '--seeds=0,1',
      '--data=tests/tiny.py',
      f'--root={root}',
      '--config.data.val_per_class=3',
      '--config.eval.select_on_val=False',
    ],
    cwd=cli.ROOT,
    capture_output=True,
    text=True,
    timeout=900,
  )


def _cell(values, col):
  scale, fmt = (1, '{:.3f}') if col == 'nll' else (100, '{:.2f}')
  return (
    fmt.format(scale * statistics.mean(values))
    + ' ± '
    + fmt.format(scale * statistics.stdev(values))
  )


def test_compare_trains_reuses_stage1_tabulates_and_skips(tmp_path):
  root = tmp_path / 'cmp'
  res = _compare(root)
  assert res.returncode == 0, res.stderr[-3000:]
  # ce runs first (crt needs it) and crt trains no stage 1 of its own.
  lines = [l for l in res.stdout.splitlines() if 'training in' in l]
  assert [l.split(':')[0] for l in lines] == [
    'ce seed 0',
    'ce seed 1',
    'crt seed 0',
    'crt seed 1',
  ]
  for seed in (0, 1):
    crt = root / 'crt' / f'seed{seed}'
    assert not (crt / 'stage1').exists()
    config = json.loads((crt / 'config.json').read_text())
    assert config['stage2']['init_from'] == str(
      root / 'ce' / f'seed{seed}' / 'stage1' / 'checkpoints'
    )
    assert config['seed'] == seed
    assert (
      json.loads((crt / 'stage2' / 'report.json').read_text())['method']
      == 'crt'
    )
  table = (root / 'comparison.md').read_text()
  rows = {
    tuple(r.split(' | ')[:2]): r.strip(' |').split(' | ')
    for r in table.splitlines()[2:]
  }
  assert set(rows) == {('| ce', 'stage1'), ('| crt', 'stage2')}
  cols = ('top1', 'many', 'medium', 'few', 'ece', 'nll')
  for (method, stage), cells in rows.items():
    reports = [
      json.loads(
        (root / method[2:] / f'seed{s}' / stage / 'report.json').read_text()
      )
      for s in (0, 1)
    ]
    assert cells[2] == '2'
    for col, cell in zip(cols, cells[3:]):
      assert cell == _cell([r[col] for r in reports], col), (method, col)
  # Nothing is trained again: every run is skipped, no report rewritten.
  stamps = {p: p.stat().st_mtime_ns for p in root.rglob('report.json')}
  again = _compare(root)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count('finished, skipped') == 4
  assert 'training in' not in again.stdout
  assert {p: p.stat().st_mtime_ns for p in root.rglob('report.json')} == stamps
  assert (root / 'comparison.md').read_text() == table
