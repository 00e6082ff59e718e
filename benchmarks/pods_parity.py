"""A run on N processes × D devices against the same run on 1 process ×
N·D devices, on this machine (a localhost coordinator, CPU devices): the
multi-host code path without a cluster. Prints both summaries side by side
and exits 1 if any stage's top-1 differs.

  python benchmarks/pods_parity.py --config=configs/baselines/tau_norm.py:default \
      --workdir=/tmp/parity_tau_norm
  python benchmarks/pods_parity.py --config=configs/default.py \
      --workdir=/tmp/parity_dlsa -- --config.dlsa.enabled=True

Arguments after `--` go to both runs. The N-process run goes through
launch/local_processes.sh; each run's wall time is printed with it.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ('top1', 'many', 'medium', 'few', 'nll')


def run(command, env) -> float:
  """Runs `command` from the repository root; its wall time in seconds."""
  start = time.time()
  done = subprocess.run(
    command, cwd=ROOT, env=env, capture_output=True, text=True
  )
  if done.returncode:
    sys.exit(
      f'error: {" ".join(command)} failed (exit {done.returncode}):\n'
      f'{done.stdout[-2000:]}{done.stderr[-2000:]}'
    )
  return time.time() - start


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', required=True)
  parser.add_argument(
    '--workdir',
    required=True,
    help='gets one/ (1 process) and multi/ (N processes)',
  )
  parser.add_argument('--processes', type=int, default=2)
  parser.add_argument(
    '--devices', type=int, default=2, help='CPU devices per process'
  )
  parser.add_argument('overrides', nargs='*', help='after --: --config.KEY=V')
  args = parser.parse_args(argv)
  one, multi = (os.path.join(args.workdir, n) for n in ('one', 'multi'))
  n, d = args.processes, args.devices
  env = dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    XLA_FLAGS=f'--xla_force_host_platform_device_count={n * d}',
  )
  wall_one = run(
    [
      sys.executable,
      '-m',
      'lcreg_jax.main',
      f'--config={args.config}',
      f'--workdir={one}',
      *args.overrides,
    ],
    env,
  )
  wall_multi = run(
    [
      'bash',
      'launch/local_processes.sh',
      str(n),
      str(d),
      args.config,
      multi,
      *args.overrides,
    ],
    dict(os.environ),
  )
  a, b = (
    json.load(open(os.path.join(w, 'summary.json'))) for w in (one, multi)
  )
  print(
    f'{args.config} {" ".join(args.overrides)}: 1 × {n * d} devices '
    f'({wall_one:.0f} s) vs {n} processes × {d} ({wall_multi:.0f} s)'
  )
  print('| stage | ' + ' | '.join(f'{m} (1 / {n})' for m in METRICS) + ' |')
  print('|---' * (len(METRICS) + 1) + '|')
  same = a.keys() == b.keys()
  for stage in a:
    cells = []
    for m in METRICS:
      x, y = a[stage].get(m), b.get(stage, {}).get(m)
      scale = 1 if m == 'nll' else 100
      cells.append(
        '-'
        if x is None
        else f'{x * scale:.4g} / {y * scale:.4g}'
        if y is not None
        else f'{x * scale:.4g} / -'
      )
    same &= a[stage].get('top1') == b.get(stage, {}).get('top1')
    print(f'| {stage} | ' + ' | '.join(cells) + ' |')
  print('same top-1 in every stage' if same else 'top-1 DIFFERS')
  return 0 if same else 1


if __name__ == '__main__':
  sys.exit(main())
