"""Does LCReg's reconstruction loss stay informative? (issue 9, item 11)

  python benchmarks/recon_loss_study.py --root=/tmp/recon_study \
      --config=configs/default.py --seeds=0,1,2 [-- --config.KEY=VALUE ...]

Trains stage 1 and 2 of the config once per (variant, seed), each in
`<root>/<variant>/seed<k>` through the real command (a finished run is not
retrained), and prints one table: the reconstruction loss L_recon at a few
steps (from the TensorBoard events, as logged every `log_every` steps), the
size of its share of the stage-1 objective β·L_recon, and the stage-1 and
stage-2 test top-1, mean ± sample std over the seeds.

Variants: `raw` (the paper's form, un-normalised correlation, the default),
`norm_t1`, `norm_t0.1`, `norm_t0.05` (rows L2-normalised, correlation divided
by the temperature; `model.latent.recon_normalize=True`).
"""

import argparse
import glob
import json
import os
import subprocess
import sys

import numpy as np

VARIANTS = {
  'raw': [],
  'norm_t1': [
    '--config.model.latent.recon_normalize=True',
    '--config.model.latent.recon_temperature=1.0',
  ],
  'norm_t0.1': [
    '--config.model.latent.recon_normalize=True',
    '--config.model.latent.recon_temperature=0.1',
  ],
  'norm_t0.05': [
    '--config.model.latent.recon_normalize=True',
    '--config.model.latent.recon_temperature=0.05',
  ],
}


def recon_curve(stage_dir: str) -> dict[int, float]:
  """{step: recon_loss} from a stage's TensorBoard events."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  out = {}
  for path in sorted(glob.glob(os.path.join(stage_dir, 'events.out.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == 'recon_loss':
          out[event.step] = float(tf.make_ndarray(value.tensor))
  return out


def _at(curve: dict, step: int) -> float:
  """The logged value at the first logged step >= `step` (or the last)."""
  steps = sorted(curve)
  chosen = next((s for s in steps if s >= step), steps[-1])
  return curve[chosen]


def _cell(values, fmt):
  values = np.asarray(values, np.float64)
  if len(values) == 1:
    return fmt.format(values[0])
  return f'{fmt.format(values.mean())} ± {fmt.format(values.std(ddof=1))}'


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--root', required=True)
  parser.add_argument('--config', default='configs/default.py')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--variants', default=','.join(VARIANTS))
  parser.add_argument(
    '--steps',
    default='10,50,200',
    help='stage-1 steps at which to show L_recon',
  )
  parser.add_argument(
    'overrides', nargs='*', help='extra --config.KEY=VALUE for every run'
  )
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(',')]
  shown = [int(s) for s in args.steps.split(',')]
  rows = []
  for variant in args.variants.split(','):
    per_seed = []
    for seed in seeds:
      work = os.path.join(args.root, variant, f'seed{seed}')
      if not os.path.exists(os.path.join(work, 'summary.json')):
        cmd = [
          sys.executable,
          '-m',
          'lcreg_jax.main',
          f'--config={args.config}',
          f'--workdir={work}',
          f'--config.seed={seed}',
          *VARIANTS[variant],
          *args.overrides,
        ]
        print('running:', ' '.join(cmd), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
      summary = json.load(open(os.path.join(work, 'summary.json')))
      curve = recon_curve(os.path.join(work, 'stage1'))
      per_seed.append(
        dict(
          curve=[_at(curve, s) for s in shown],
          final=curve[max(curve)],
          stage1=summary['stage1']['top1'],
          stage2=summary['stage2']['top1'],
        )
      )
    rows.append((variant, per_seed))

  head = [f'L_recon @ {s}' for s in shown] + [
    'L_recon final',
    'stage-1 top-1',
    'stage-2 top-1',
  ]
  print(
    f'\n{args.config}, seeds {args.seeds}; L_recon as logged '
    '(mean over the log interval):'
  )
  print('| variant | ' + ' | '.join(head) + ' |')
  print('|---|' + '---|' * len(head))
  for variant, runs in rows:
    cells = [
      _cell([r['curve'][i] for r in runs], '{:.3g}') for i in range(len(shown))
    ]
    cells.append(_cell([r['final'] for r in runs], '{:.3g}'))
    cells += [
      _cell([100 * r[k] for r in runs], '{:.2f}') for k in ('stage1', 'stage2')
    ]
    print(f'| {variant} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
  main()
