"""The benchmark commands of docs/benchmarks.md run from a checkout, as written there."""

import json
import os
import subprocess
import sys

import pytest

from tests import cli

pytestmark = pytest.mark.slow


def _run(*args):
  return subprocess.run(
    [sys.executable, *args],
    cwd=cli.ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_step_time_prints_both_models_and_their_ratio():
  res = _run(
    'benchmarks/step_time.py',
    '--config=tests/tiny.py',
    '--steps=1',
    '--rounds=1',
    '--warmup=1',
  )
  assert res.returncode == 0, res.stderr[-2000:]
  lines = res.stdout.splitlines()
  assert any(l.startswith('plain ') and 'ms/step' in l for l in lines)
  assert any(l.startswith('lcreg ') and 'ms/step' in l for l in lines)
  ratio = float(lines[-1].split(':')[-1])
  assert 0 < ratio < 100


def test_step_time_times_plain_full_and_diagonal_in_one_run():
  res = _run(
    'benchmarks/step_time.py',
    '--config=tests/tiny.py',
    '--variants=plain,full,diagonal',
    '--batch=4',
    '--steps=1',
    '--rounds=1',
    '--warmup=0',
  )
  assert res.returncode == 0, res.stderr[-2000:]
  lines = res.stdout.splitlines()
  assert 'batch 4,' in lines[0]
  state = {}
  for name in ('plain', 'full', 'diagonal'):
    line = next(l for l in lines if l.startswith(name + ' '))
    assert 'ms/step' in line and 'images/s' in line
    assert 'peak device memory n/a on CPU' in line
    state[name] = int(line.split(' state ')[1].split(' bytes')[0])
    moments = int(line.split('latent moments ')[1].split(')')[0])
    assert (moments == 0) == (name == 'plain')
  # tests/tiny.py: M = 4 latents on ResNet-8 (D = 64), float32. The two
  # LCReg states differ only in the covariance: M × D × D vs M × D.
  m, d = 4, 64
  assert state['full'] - state['diagonal'] == (m * d * d - m * d) * 4
  assert state['plain'] < state['diagonal']
  table = [l for l in lines if l.startswith('| ')]
  assert [r.split(' | ')[0] for r in table[1:]] == [
    '| plain',
    '| full',
    '| diagonal',
  ]
  assert lines[-2].startswith('ratio full/plain step time: ')
  assert lines[-1].startswith('ratio diagonal/plain step time: ')
  assert all(0 < float(l.split(':')[-1]) < 100 for l in lines[-2:])


def test_step_time_rejects_an_unknown_variant():
  res = _run(
    'benchmarks/step_time.py',
    '--config=tests/tiny.py',
    '--variants=plain,diag',
    '--steps=1',
    '--rounds=1',
  )
  assert res.returncode != 0
  assert 'diag' in res.stderr and 'diagonal' in res.stderr


def test_collect_results_reads_the_reports(finished_run):
  workdir = str(finished_run[0])
  res = _run('benchmarks/collect_results.py', f'tiny={workdir},{workdir}')
  assert res.returncode == 0, res.stderr
  with open(os.path.join(workdir, 'stage2', 'report.json')) as f:
    top1 = 100 * json.load(f)['top1']
  row = next(l for l in res.stdout.splitlines() if '| stage2 |' in l)
  # Two identical runs: mean = the value, std = 0.
  assert f'| tiny | stage2 | 2 | {top1:.2f} ± 0.00 |' in row


def test_record_run_writes_a_record_that_collect_results_renders(
  finished_run, tmp_path
):
  workdir = str(finished_run[0])
  res = _run(
    'benchmarks/record_run.py',
    '--name=tiny',
    '--table=tiny_t',
    '--label=Tiny',
    f'--workdir={workdir}',
    '--command=python -m lcreg_jax.main --config=tests/tiny.py',
    f'--results_dir={tmp_path}',
  )
  assert res.returncode == 0, res.stderr[-2000:]
  with open(tmp_path / 'tiny.json') as f:
    record = json.load(f)
  for field in (
    'command',
    'config_hash',
    'git_commit',
    'date',
    'machine',
    'wall_s',
    'metrics',
  ):
    assert record[field] not in (None, ''), field
  with open(os.path.join(workdir, 'stage2', 'report.json')) as f:
    top1 = json.load(f)['top1']
  assert record['metrics']['stage2']['top1'] == top1
  assert record['config_hash'].startswith('sha256:')
  sys.path.insert(0, os.path.join(cli.ROOT, 'benchmarks'))
  try:
    import collect_results  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  page = collect_results.results_page(
    collect_results.load_records(str(tmp_path))
  )
  assert '## tiny_t' in page and '`results/tiny.json`' in page
  assert f'| Tiny | stage2 | 1 | {100 * top1:.2f} |' in page


def test_state_size_counts_the_covariance():
  res = _run('benchmarks/state_size.py', '--config=tests/tiny.py')
  assert res.returncode == 0, res.stderr[-2000:]
  # tests/tiny.py: M = 4 latents on ResNet-8 (D = 64): a full covariance is
  # 4 × 64 × 64 float32 = 64 KiB, plus mean and count.
  full = next(
    l for l in res.stdout.splitlines() if l.startswith('covariance=full')
  )
  moments = float(full.split('latent_moments ')[1].split(' MiB')[0])
  assert moments == round((4 * 64 * 64 + 4 * 64 + 4) * 4 / 2**20, 3)


def test_recon_loss_study_reads_the_logged_reconstruction_loss(finished_run):
  sys.path.insert(0, os.path.join(cli.ROOT, 'benchmarks'))
  try:
    import recon_loss_study  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  curve = recon_loss_study.recon_curve(str(finished_run[0] / 'stage1'))
  # tests/tiny.py logs every step of its 6; the loss is a -log softmax over
  # the positions, so in (0, log P].
  assert sorted(curve) == [1, 2, 3, 4, 5, 6]
  assert all(0 < v < 10 for v in curve.values())
  assert recon_loss_study._at(curve, 4) == curve[4]
  assert recon_loss_study._at(curve, 99) == curve[6]  # past the end: the last


def _dlsa_workdir(root, train, test, final, dlsa, control):
  os.makedirs(os.path.join(root, 'dlsa'))
  os.makedirs(os.path.join(root, 'dlsa_depth0'))
  routing = {
    '0': {'train_share_by_class': train, 'test_share_by_class': test},
    '1': {'test_accuracy_by_class': final},
  }
  with open(os.path.join(root, 'dlsa', 'report.json'), 'w') as f:
    json.dump({'routing': routing, 'per_class_accuracy': dlsa}, f)
  with open(os.path.join(root, 'dlsa_depth0', 'report.json'), 'w') as f:
    json.dump({'per_class_accuracy': control}, f)
  return str(root)


def test_dlsa_routing_averages_each_class_over_runs(tmp_path):
  sys.path.insert(
    0, os.path.join(os.path.dirname(__file__), '..', 'benchmarks')
  )
  import dlsa_routing  # pylint: disable=g-import-not-at-top

  a = _dlsa_workdir(
    tmp_path / 'a', [0.2, 1.0], [0.4, 0.5], [0.9, None], [0.8, 0.5], [0.7, 0.9]
  )
  b = _dlsa_workdir(
    tmp_path / 'b', [0.4, 1.0], [0.2, 0.7], [0.7, 0.0], [0.6, 0.7], [0.9, 0.7]
  )
  rows = dlsa_routing.routing_table([a, b]).splitlines()
  assert rows[0] == '2 runs'
  # Means by hand; the class no sample reached in run a averages run b only.
  assert rows[4] == '| 0 | 30.0 | 30.0 | 80.0 | 70.0 | 80.0 |'
  assert rows[5] == '| 1 | 100.0 | 60.0 | 0.0 | 60.0 | 80.0 |'
