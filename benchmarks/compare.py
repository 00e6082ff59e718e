"""Trains baselines × seeds and writes one comparison table.

  python benchmarks/compare.py --methods=ce,crt,lws,lcreg --seeds=0,1,2 \
      --data=cifar10_lt --root=workdirs/compare [--config.stage1.epochs=2 ...]

Each (method, seed) runs `python -m lcreg_jax.main` with
configs/baselines/<method>.py:<data> in `<root>/<method>/seed<k>`, one after
the other in subprocesses; any further `--config.*` flags go to every run.
A run whose stages all have their report.json is skipped, so a second
invocation only trains what is missing (an interrupted run resumes from its
checkpoint). crt, lws, tau_norm and posthoc_la all start from the plain CE
stage 1: they read `<root>/ce/seed<k>/stage1/checkpoints` through
stage2.init_from instead of training their own (ce runs first, added if
not asked for). The table (mean ± sample std over the seeds, by
collect_results.table) is printed and written to `<root>/comparison.md`.
"""

import argparse
import json
import os
import subprocess
import sys

import collect_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINES = os.path.join(ROOT, 'configs', 'baselines')
SHARED_STAGE1 = ('crt', 'lws', 'tau_norm', 'posthoc_la')


def plan(methods: list[str]) -> list[str]:
  """The methods in run order: ce first when others reuse its stage 1."""
  known = sorted(
    f[:-3]
    for f in os.listdir(BASELINES)
    if f.endswith('.py') and not f.startswith('_')
  )
  unknown = [m for m in methods if m not in known]
  if unknown:
    raise SystemExit(
      f'Unknown method(s) {", ".join(unknown)}: use names of '
      f'configs/baselines ({", ".join(known)}).'
    )
  if any(m in SHARED_STAGE1 for m in methods):
    methods = ['ce'] + [m for m in methods if m != 'ce']
  return list(dict.fromkeys(methods))


def finished(workdir: str) -> bool:
  """The run's summary lists its stages and each has its report.json."""
  path = os.path.join(workdir, 'summary.json')
  if not os.path.exists(path):
    return False
  with open(path) as f:
    stages = json.load(f)
  return bool(stages) and all(
    os.path.exists(os.path.join(workdir, s, 'report.json')) for s in stages
  )


def command(method, seed, data, root, overrides) -> list[str]:
  workdir = os.path.join(root, method, f'seed{seed}')
  args = [
    sys.executable,
    '-m',
    'lcreg_jax.main',
    f'--config={os.path.join(BASELINES, method)}.py:{data}',
    f'--workdir={workdir}',
    f'--config.seed={seed}',
  ]
  if method in SHARED_STAGE1:
    ce_stage1 = os.path.join(root, 'ce', f'seed{seed}', 'stage1', 'checkpoints')
    args += [
      '--config.stage1.enabled=False',
      f'--config.stage2.init_from={ce_stage1}',
    ]
  return args + list(overrides)


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
    '--methods',
    required=True,
    help='comma-separated names of configs/baselines',
  )
  parser.add_argument('--seeds', default='0,1,2', help='comma-separated')
  parser.add_argument(
    '--data',
    default='fashion_mnist_lt',
    help='configs/<data>.py, or a config file path',
  )
  parser.add_argument('--root', required=True, help='workdir of all runs')
  args, overrides = parser.parse_known_args(argv)
  bad = [o for o in overrides if not o.startswith('--config.')]
  if bad:
    parser.error(
      f'unrecognised arguments {bad}; only --config.* overrides '
      'are passed on to the runs'
    )
  methods = plan([m for m in args.methods.split(',') if m])
  seeds = [int(s) for s in args.seeds.split(',')]
  root = os.path.abspath(args.root)
  for method in methods:
    for seed in seeds:
      workdir = os.path.join(root, method, f'seed{seed}')
      if finished(workdir):
        print(f'{method} seed {seed}: finished, skipped', flush=True)
        continue
      print(f'{method} seed {seed}: training in {workdir}', flush=True)
      res = subprocess.run(
        command(method, seed, args.data, root, overrides), cwd=ROOT
      )
      if res.returncode:
        raise SystemExit(
          f'{method} seed {seed} failed (exit '
          f'{res.returncode}); rerun to resume it.'
        )
  table = collect_results.table(
    [(m, [os.path.join(root, m, f'seed{s}') for s in seeds]) for m in methods]
  )
  with open(os.path.join(root, 'comparison.md'), 'w') as f:
    f.write(table + '\n')
  print(table)
  return table


if __name__ == '__main__':
  main()
