"""Turns a finished run into a run record under results/.

  python benchmarks/record_run.py --name=default --table=default \
      --label=LCReg -- python -m lcreg_jax.main --config=configs/default.py \
      --workdir=workdirs/default

runs the command after `--`, times it, and writes `results/<name>.json`
from what the run left in its workdir. Without a command,
`--workdir=DIR --command='...'` records a run that already finished (the
wall time is then the time between the writes of `config.json` and
`summary.json`, or `--wall_s`).

A record is one small JSON file: the command, a hash of the resolved config
(`<workdir>/config.json`), the git commit, the date, the machine, the wall
time and the metrics of every stage in `summary.json` (DLSA's routing from
`dlsa/report.json`). `python benchmarks/collect_results.py --markdown`
turns the records into docs/results.md and the README's results blocks.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, 'results')
# The metrics a record keeps of each stage (fractions, as in summary.json).
METRICS = (
  'top1',
  'top1_best_val',
  'many',
  'medium',
  'few',
  'ece',
  'mce',
  'nll',
  'num_examples',
  'method',
  'tau',
)


def config_hash(config: dict) -> str:
  """sha256 of the resolved config, keys sorted: equal configs, equal hash."""
  blob = json.dumps(config, sort_keys=True, separators=(',', ':'))
  return 'sha256:' + hashlib.sha256(blob.encode()).hexdigest()[:16]


def git_commit() -> str:
  """HEAD of the checkout, with '+dirty' when tracked files differ from it."""

  def git(*args):
    return subprocess.run(
      ['git', *args], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()

  commit = git('rev-parse', 'HEAD') or 'unknown'
  if git(
    'status',
    '--porcelain',
    '--untracked-files=no',
    '--',
    'lcreg_jax',
    'configs',
  ):
    commit += '+dirty'
  return commit


def machine() -> str:
  """The machine in words: CPU count, architecture, OS, Python, JAX backend."""
  parts = [
    f'{os.cpu_count()}-core {platform.machine()}',
    platform.system(),
    f'Python {platform.python_version()}',
  ]
  try:
    import jax  # pylint: disable=g-import-not-at-top

    parts.append(f'jax {jax.__version__} on {jax.default_backend()}')
  except ImportError:
    pass
  return ', '.join(parts)


def _workdir_of(command: list[str]) -> str | None:
  for arg in command:
    if arg.startswith('--workdir='):
      return arg.split('=', 1)[1]
  return None


def _data_line(text: str):
  """('digits-lt10', 300) from the summary's first line, if printed."""
  m = re.search(r'^(\S+), test set of (\d+) \(accuracies', text, re.M)
  return (m.group(1), int(m.group(2))) if m else (None, None)


def data_name_of(config: dict) -> str:
  """The data set's name as the run prints it (lcreg_jax.data's rule)."""
  d = config['data']
  if d['source'] in ('list', 'tfds_stream'):
    name = d['name'] or ('list' if d['source'] == 'list' else d['tfds_name'])
  else:
    name = d['name'] or (
      d['tfds_name'] if d['source'] == 'tfds' else d['source']
    )
  if d['imbalance_factor'] > 1:
    name = f'{name}-lt{d["imbalance_factor"]:g}'
  return name


def make_record(
  workdir: str,
  *,
  command: str,
  table: str,
  label: str,
  wall_s: float | None,
  note: str = '',
  data_name=None,
  test_size=None,
  commit=None,
  date=None,
) -> dict:
  """The record of the finished run in `workdir`."""

  def read(*parts):
    with open(os.path.join(workdir, *parts)) as f:
      return json.load(f)

  config = read('config.json')
  summary = read('summary.json')
  if wall_s is None:
    wall_s = os.path.getmtime(
      os.path.join(workdir, 'summary.json')
    ) - os.path.getmtime(os.path.join(workdir, 'config.json'))
  metrics = {}
  for stage, row in summary.items():
    metrics[stage] = {k: row[k] for k in METRICS if row.get(k) is not None}
  # DLSA's depth-0 control has a report but no summary row.
  if 'dlsa' in metrics and os.path.exists(
    os.path.join(workdir, 'dlsa_depth0', 'report.json')
  ):
    row = read('dlsa_depth0', 'report.json')
    metrics['dlsa_depth0'] = {
      k: row[k] for k in METRICS if row.get(k) is not None
    }
  if 'dlsa' in metrics and os.path.exists(
    os.path.join(workdir, 'dlsa', 'report.json')
  ):
    routing = read('dlsa', 'report.json').get('routing')
    if routing:
      metrics['dlsa']['routing_share'] = [
        routing[k]['share'] for k in sorted(routing, key=int)
      ]
  if test_size is None:
    test_size = next(iter(summary.values())).get('num_examples')
  if date is None:
    date = datetime.datetime.fromtimestamp(
      os.path.getmtime(os.path.join(workdir, 'summary.json')),
      datetime.timezone.utc,
    ).strftime('%Y-%m-%d %H:%M UTC')
  return {
    'table': table,
    'label': label,
    'command': command,
    'config_hash': config_hash(config),
    'git_commit': commit or git_commit(),
    'date': date,
    'machine': machine(),
    'wall_s': round(float(wall_s), 1),
    'note': note,
    'data': {
      'name': data_name or data_name_of(config),
      'test_examples': test_size,
    },
    'metrics': metrics,
  }


def write_record(record: dict, name: str, results_dir: str = RESULTS) -> str:
  os.makedirs(results_dir, exist_ok=True)
  path = os.path.join(results_dir, f'{name}.json')
  with open(path, 'w') as f:
    json.dump(record, f, indent=2, sort_keys=False)
    f.write('\n')
  return path


def main(argv=None) -> str:
  argv = sys.argv[1:] if argv is None else argv
  command = []
  if '--' in argv:
    i = argv.index('--')
    argv, command = argv[:i], argv[i + 1 :]
  parser = argparse.ArgumentParser(
    description=__doc__.split('\n')[0],
    usage='%(prog)s --name=NAME --table=TABLE [options] -- COMMAND ...',
  )
  parser.add_argument(
    '--name', required=True, help='the record is results/<name>.json'
  )
  parser.add_argument(
    '--table', required=True, help='the results table the record is a row of'
  )
  parser.add_argument(
    '--label', default='', help='its row name in that table (default: name)'
  )
  parser.add_argument(
    '--workdir',
    default=None,
    help='a finished run (default: the --workdir of the command)',
  )
  parser.add_argument(
    '--command', default=None, help='the command that made the run in --workdir'
  )
  parser.add_argument('--wall_s', type=float, default=None)
  parser.add_argument(
    '--note', default='', help='conditions worth knowing (e.g. a shared CPU)'
  )
  parser.add_argument(
    '--commit',
    default=None,
    help='the commit the run used (default: HEAD of this checkout)',
  )
  parser.add_argument('--results_dir', default=RESULTS)
  args = parser.parse_args(argv)
  wall_s, data_name, test_size = args.wall_s, None, None
  if command:
    start = time.monotonic()
    res = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    wall_s = time.monotonic() - start
    sys.stdout.write(res.stdout)
    if res.returncode:
      raise SystemExit(
        f'error: the command exited {res.returncode}; no record written.'
      )
    data_name, test_size = _data_line(res.stdout)
    shown = ' '.join(shlex.quote(a) for a in command)
    shown = re.sub(r'^\S*python3?\S* ', 'python ', shown)
  elif args.command:
    shown = args.command
  else:
    parser.error('give a command after --, or --workdir and --command')
  workdir = args.workdir or _workdir_of(command or shlex.split(shown))
  if not workdir:
    parser.error('no --workdir given and none in the command')
  record = make_record(
    workdir,
    command=shown,
    table=args.table,
    label=args.label or args.name,
    wall_s=wall_s,
    note=args.note,
    data_name=data_name,
    test_size=test_size,
    commit=args.commit,
  )
  path = write_record(record, args.name, args.results_dir)
  print(f'wrote {path}')
  return path


if __name__ == '__main__':
  main()
