"""Parity with the authors' code: MiSLAS's stage 1 and 2 and DLSA (with its
depth-0 control), run from the authors' own PyTorch code against lcreg_jax,
on the same long-tailed images and the same stage-1 features, seed by seed.

  python benchmarks/parity/run.py --mislas_repo=DIR --dlsa_repo=DIR \\
      --torch_python=/tmp/torch_tv/bin/python --seeds=0,1,2,3,4,5 \\
      --out=workdirs/parity --stage1_epochs=5 --stage2_epochs=2

Per seed S, in <out>/seed_S/:
  ours/        python -m lcreg_jax.main --config=<--config> with the seed,
               the epochs, --backbone and DLSA on (its own workdir);
  mislas/      the edited MiSLAS: train_stage1.py, then train_stage2.py from
               that run's last checkpoint, on <out>/data.npz (our images,
               exported through lcreg_jax's data API) with a yaml made from
               our run's resolved config (lr, batch, weight decay, momentum,
               mixup, label-aware smoothing, lr factor, epochs);
  mislas_stage2_from_ours/ (part cross) MiSLAS's stage 2 from our final
               stage-1 model, converted to its checkpoint format and
               checked on the test split first: the like-for-like stage 2;
  dlsa_features/ our run's final stage-1 features, standardised and carved
               exactly as our DLSA stage does, in DLSA's h5 layout;
  dlsa_<sel>_{dlsa,control}/ the edited train_dlsa.py and its depth-0
               control with classifier epochs chosen on <sel> (test: the
               authors' choice; val: ours).
A part with a result.json is skipped on a re-run (the command resumes).
Then <out>/parity.md (the table) and <out>/parity.json (every number).

The authors' code runs in its own environment (--torch_python), which
needs torch, torchvision, yacs (MiSLAS), easydict, h5py, scikit-learn,
tqdm, tensorboard (DLSA):
  python3 -m venv /tmp/torch_tv && /tmp/torch_tv/bin/pip install \\
      torch==2.14.1 torchvision==0.29.1 yacs easydict h5py scikit-learn \\
      tqdm tensorboard
Every edit made to a copy of their code: benchmarks/parity/EDITS.md.
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks.parity import edits  # pylint: disable=g-import-not-at-top
from benchmarks.parity import results  # pylint: disable=g-import-not-at-top

PARTS = ('ours', 'mislas', 'cross', 'dlsa')
SELECTIONS = ('test', 'val')


def parse_args(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__.split('\n\n')[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog=__doc__.split('\n\n', 1)[1],
  )
  p.add_argument('--mislas_repo', help='a checkout of dvlab-research/MiSLAS')
  p.add_argument('--dlsa_repo', help='a checkout of silicx/DLSA')
  p.add_argument('--torch_python', help='python of the torch environment')
  p.add_argument('--seeds', default='0,1,2,3,4,5')
  p.add_argument('--out', default='workdirs/parity')
  p.add_argument(
    '--config',
    default='configs/baselines/mislas.py',
    help='our config (MiSLAS stage 1 and 2; add :DATA)',
  )
  p.add_argument(
    '--backbone',
    default='resnet8',
    help='model.backbone, a CIFAR ResNet (resnet8, resnet32)',
  )
  p.add_argument('--stage1_epochs', type=float, default=5)
  p.add_argument('--stage2_epochs', type=float, default=2)
  p.add_argument(
    '--val_per_class',
    type=int,
    default=0,
    help='data.val_per_class: 0 trains both on every long-'
    "tailed image; DLSA then carves its validation split "
    'from the training features (dlsa.val_per_class)',
  )
  p.add_argument(
    '--parts',
    default=','.join(PARTS),
    help=f'which of {",".join(PARTS)} to run (a part needs ours\' workdir)',
  )
  p.add_argument(
    '--dlsa_select',
    default=','.join(SELECTIONS),
    help='where the authors\' DLSA classifiers choose their '
    'epoch: test (theirs), val (ours)',
  )
  p.add_argument(
    '--dlsa_flow_epochs',
    type=int,
    default=None,
    help="the authors' flow epochs; default: our flow_steps x "
    'flow_batch_size pairs / training samples, rounded',
  )
  p.add_argument(
    '--dlsa_classifier_epochs',
    type=int,
    default=150,
    help="the authors' classifier epochs (their configs: 150)",
  )
  p.add_argument(
    '--dlsa_classifier_lr',
    type=float,
    default=0.01,
    help="their SGD lr (CE-feature configs: 1e-2)",
  )
  p.add_argument(
    '--dlsa_eval_freq',
    type=int,
    default=5,
    help='epochs between their epoch-choice evaluations',
  )
  p.add_argument(
    '--workers', type=int, default=0, help="MiSLAS's DataLoader workers"
  )
  p.add_argument(
    '--ours_arg',
    action='append',
    default=[],
    help='extra --config.KEY=VALUE for our runs (repeatable)',
  )
  return p.parse_args(argv)


def log(msg: str):
  print(f'[parity {time.strftime("%H:%M:%S")}] {msg}', flush=True)


def _write_json(path: str, obj) -> None:
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _run(cmd, cwd, log_path, env=None) -> float:
  """Runs cmd with its output in log_path; its wall time; stops with the
  log's tail on failure."""
  start = time.time()
  with open(log_path, 'w') as f:
    res = subprocess.run(
      cmd,
      cwd=cwd,
      stdout=f,
      stderr=subprocess.STDOUT,
      env=dict(os.environ, **(env or {})),
    )
  if res.returncode:
    with open(log_path) as f:
      tail = f.read()[-3000:]
    sys.exit(
      f'error: {" ".join(cmd)} (in {cwd}) exited {res.returncode}; '
      f'log {log_path}:\n{tail}'
    )
  return time.time() - start


def part(name: str, folder: str, fn):
  """Runs fn(folder) -> dict unless folder/result.json exists; the dict
  (with its wall time) is written there and returned."""
  done = os.path.join(folder, 'result.json')
  if os.path.exists(done):
    log(f'{name}: done before, skipped')
    return _read_json(done)
  os.makedirs(folder, exist_ok=True)
  log(f'{name}: running')
  start = time.time()
  out = fn(folder)
  out['wall_s'] = round(time.time() - start, 1)
  _write_json(done, out)
  log(
    f'{name}: {out["wall_s"]:.0f} s, '
    + ', '.join(
      f'{k} {v:.4f}'
      for k, v in out.items()
      if k.startswith('top1') and isinstance(v, float)
    )
  )
  return out


# Ours.


def ours_command(args, seed: int, workdir: str) -> list[str]:
  return [
    sys.executable,
    '-m',
    'lcreg_jax.main',
    f'--config={args.config}',
    f'--workdir={workdir}',
    f'--config.seed={seed}',
    f'--config.dlsa.seed={seed}',
    f'--config.stage1.epochs={args.stage1_epochs}',
    f'--config.stage2.epochs={args.stage2_epochs}',
    f'--config.model.backbone={args.backbone}',
    f'--config.data.val_per_class={args.val_per_class}',
    '--config.dlsa.enabled=True',
    '--config.eval.plots=False',
    *args.ours_arg,
  ]


def run_ours(args, seed, folder):
  workdir = os.path.join(folder, 'run')
  wall = _run(
    ours_command(args, seed, workdir),
    ROOT,
    os.path.join(folder, 'log.txt'),
    env={'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')},
  )
  out = results.ours_result(workdir)
  return {f'top1_{k}': v for k, v in out.items()} | {'run_wall_s': wall}


# MiSLAS.


_BLOCKS = {
  'resnet8': 1,
  'resnet20': 3,
  'resnet32': 5,
  'resnet44': 7,
  'resnet56': 9,
  'resnet110': 18,
}


def _groups(num_classes: int) -> dict:
  """MiSLAS's head/med/tail class index ranges (its log's HAcc/MAcc/TAcc
  only): thirds, as its CIFAR-10 yaml's 0-3, 3-7, 7-10."""
  a, b = round(num_classes * 0.3), round(num_classes * 0.7)
  return {
    'head_class_idx': [0, a],
    'med_class_idx': [a, b],
    'tail_class_idx': [b, num_classes],
  }


def mislas_yaml(
  config: dict,
  stage: str,
  seed: int,
  data_path: str,
  workers: int,
  resume: str = '',
) -> dict:
  """The edited MiSLAS's config for `stage` from our resolved config."""
  s1, s2 = config['stage1'], config['stage2']
  common = dict(
    name=f'parity_{stage}',
    print_freq=100000,
    workers=workers,
    log_dir='logs',
    model_dir='ckps',
    dataset='parity_npz',
    data_path=data_path,
    num_classes=config['data']['num_classes'],
    backbone='parity_resnet_fe',
    resume=resume,
    deterministic=True,
    seed=seed,
    gpu=None,
    world_size=-1,
    rank=-1,
    distributed=False,
    multiprocessing_distributed=False,
    **_groups(config['data']['num_classes']),
  )
  if stage == 'stage1':
    return dict(
      common,
      mode='stage1',
      lr=s1['lr'],
      batch_size=s1['batch_size'],
      weight_decay=s1['weight_decay'],
      num_epochs=int(s1['epochs']),
      momentum=s1['momentum'],
      cos=False,
      mixup=s1['mixup_alpha'] > 0,
      alpha=s1['mixup_alpha'] or 1.0,
    )
  return dict(
    common,
    mode='stage2',
    smooth_head=s2['las_head'],
    smooth_tail=s2['las_tail'],
    shift_bn=s2['shift_bn'],
    lr_factor=s2['lr_factor'],
    lr=s2['lr'],
    batch_size=s2['batch_size'],
    weight_decay=s2['weight_decay'],
    num_epochs=int(s2['epochs']),
    momentum=s2['momentum'],
    mixup=False,
  )


def schedule_problems(config: dict) -> list[str]:
  """Where our config differs from what MiSLAS hard-codes (then the table
  compares different schedules). A stage-2 epoch is the same on both sides:
  the ClassAwareSampler's max_c n_c x C samples."""
  s1, s2 = config['stage1'], config['stage2']
  out = []
  if (
    s1['schedule'],
    s1['warmup'],
    s1['warmup_epochs'],
    tuple(s1['decay_epochs']),
    s1['decay_factor'],
  ) != ('step', 'per_epoch', 5.0, (160.0, 180.0), 0.1):
    out.append(
      'stage 1: MiSLAS hard-codes 5 warm-up epochs (per epoch) and '
      'lr x0.1 after epochs 160 and 180'
    )
  if s1['epochs'] != int(s1['epochs']) or s2['epochs'] != int(s2['epochs']):
    out.append('MiSLAS trains whole epochs only')
  if s2['method'] != 'mislas' or s2['las_shape'] != 'concave':
    out.append('stage 2: MiSLAS trains its own method (concave LAS + LWS)')
  if s2['samples_per_class'] != 4:
    out.append('stage 2: MiSLAS\'s class-aware sampler takes 4 per class')
  if config['model']['shortcut'] != 'A':
    out.append('MiSLAS\'s ResNet_fe uses shortcut A')
  return out


def _yaml_text(d: dict) -> str:
  def v(x):
    return 'null' if x is None else json.dumps(x)

  return ''.join(f'{k}: {v(x)}\n' for k, x in d.items())


def run_mislas_stage(
  args, seed, folder, stage, code, config, data_path, resume=''
):
  cfg = mislas_yaml(config, stage, seed, data_path, args.workers, resume)
  path = os.path.join(folder, f'parity_{stage}.yaml')
  with open(path, 'w') as f:
    f.write(_yaml_text(cfg))
  shutil.rmtree(os.path.join(folder, 'saved'), ignore_errors=True)
  script = os.path.join(code, f'train_{stage}.py')
  wall = _run(
    [args.torch_python, script, '--cfg', path],
    folder,
    os.path.join(folder, 'stdout.txt'),
  )
  (log_file,) = glob.glob(os.path.join(folder, 'saved', '*', 'logs', '*.txt'))
  with open(log_file) as f:
    out = results.mislas_result(f.read(), cfg['num_epochs'])
  (ckpt,) = glob.glob(
    os.path.join(folder, 'saved', '*', 'ckps', 'current.pth.tar')
  )
  return dict(out, checkpoint=ckpt, run_wall_s=wall)


def mislas_setup(args, out: str, config: dict, code: dict) -> str:
  """The edited MiSLAS copy (in code['mislas']) and <out>/data.npz, our
  run's images (written once; a later run with other data is refused)."""
  data_path = os.path.join(out, 'data.npz')
  data_key = os.path.join(out, 'data_config.json')
  if 'mislas' not in code:
    code['mislas'] = edits.prepare(
      args.mislas_repo,
      os.path.join(out, 'code', 'mislas'),
      edits.mislas_edits(config['data']['channels'], _BLOCKS[args.backbone]),
      edits.MISLAS_FILES,
    )
  if not os.path.exists(data_path):
    import ml_collections  # pylint: disable=g-import-not-at-top
    from benchmarks.parity import export  # pylint: disable=g-import-not-at-top
    from lcreg_jax.data import sources  # pylint: disable=g-import-not-at-top

    data_cfg = ml_collections.ConfigDict(config['data'])
    export.write_npz(
      data_path,
      export.image_arrays(sources.load_dataset(data_cfg), data_cfg),
    )
    _write_json(data_key, config['data'])
  elif _read_json(data_key) != config['data']:
    sys.exit(
      f'error: {data_path} holds another data config than this '
      'run of ours; use another --out'
    )
  return data_path


# How far (fraction of test images) MiSLAS's evaluation of our converted
# stage-1 model may be from ours: float round-off flips a few argmaxes, a
# naming or layout error costs tens of points.
_CONVERSION_TOLERANCE = 0.002


def run_mislas_from_ours(args, seed, folder, code, config, data_path, ours):
  """MiSLAS's stage 2 started from our final stage-1 model (converted to
  its checkpoint format and checked on the test split first): the
  like-for-like stage 2, both sides from the same weights."""
  from benchmarks.parity import export  # pylint: disable=g-import-not-at-top

  arrays = os.path.join(folder, 'ours_stage1.npz')
  export.write_npz(arrays, export.mislas_state_dicts(os.path.join(ours, 'run')))
  ckpt = os.path.join(folder, 'ours_stage1.pth.tar')
  start = os.path.join(folder, 'start.json')
  _run(
    [
      args.torch_python,
      os.path.join(
        os.path.dirname(os.path.abspath(__file__)), 'mislas_checkpoint.py'
      ),
      f'--code={code}',
      f'--arrays={arrays}',
      f'--data={data_path}',
      f'--num_classes={config["data"]["num_classes"]}',
      f'--out={ckpt}',
      f'--result={start}',
    ],
    folder,
    os.path.join(folder, 'convert_log.txt'),
  )
  theirs = _read_json(start)['top1']
  mine = _read_json(os.path.join(ours, 'result.json'))['top1_stage1']
  if abs(theirs - mine) > _CONVERSION_TOLERANCE:
    sys.exit(
      f'error: our seed-{seed} stage-1 model scores {mine:.4f} in our code '
      f'but {theirs:.4f} after conversion to MiSLAS\'s ResNet_fe; the '
      'conversion (export.mislas_state_dicts) is wrong, not the run.'
    )
  out = run_mislas_stage(
    args, seed, folder, 'stage2', code, config, data_path, resume=ckpt
  )
  return dict(out, start_top1=theirs, start_top1_ours=mine)


# DLSA.


def dlsa_yaml(
  config: dict, args, feat_dir: str, root_dir: str, n_train: int
) -> dict:
  """The authors' config matching our resolved DLSA settings (flow,
  routing, depth); the classifiers keep the authors' recipe."""
  d = config['dlsa']
  epochs = args.dlsa_flow_epochs or max(
    1, round(d['flow_steps'] * d['flow_batch_size'] / n_train)
  )
  classifier = lambda inputs: {
    'eval_freq': args.dlsa_eval_freq,
    'model': {'type': 'linear', 'inputs': inputs},
    'loss': {'type': 'BSM', 'label_smoothing': 0},
    'data': {'batchsize': 128, 'num_workers': 0},
    'optim': {
      'lr': args.dlsa_classifier_lr,
      'epoch': args.dlsa_classifier_epochs,
      'momentum': 0,
    },
  }
  return {
    'device': 'cpu',
    'dataset': 'Parity',
    'feat_dir': feat_dir,
    'root_dir': root_dir,
    'max_depth': d['depth'],
    'gmflow': {
      'save_freq': 0,
      'model': {
        'n_blocks': d['num_blocks'],
        'n_hidden': 1,
        'num_cluster': d['num_clusters'],
        'gmm_center_std': d['center_std'],
      },
      'data': {
        'batchsize': d['flow_batch_size'],
        'weight_q': d['nll_weight_power'],
        'num_workers': 0,
      },
      'optim': {
        'lr': d['flow_lr'],
        'epoch': epochs,
        'momentum': d['flow_momentum'],
      },
      'loss': {
        'lambda_lh': d['nll_weight'],
        'lambda_balance': d['balance_weight'],
        'lambda_purity': d['purity_weight'],
        'posterior_momentum': d['ema_decay'],
        'contrast_type': 'soft_ce',
        'contrast_freeze': True,
      },
    },
    'filter': {'llh_proportion': d['top_fraction']},
    'cacls': classifier('XZP'),
    'regcls': classifier('XZ'),
  }


def run_dlsa_authors(
  args,
  seed,
  folder,
  code,
  cfg,
  kind,
  select,
  labels,
  num_classes,
  metric,
  flows_of=None,
):
  """One run of the edited train_dlsa.py (kind 'dlsa') or of the depth-0
  control; with `flows_of`, the folder of an earlier DLSA run of this seed,
  its trained flows are loaded (the authors' --ft_model_weight) instead of
  trained again: the epoch choice comes after the flows, so runs that
  differ only in it share them (and half the time)."""
  root = os.path.dirname(folder)
  name = os.path.basename(folder) + '_run'
  shutil.rmtree(os.path.join(root, name), ignore_errors=True)
  path = os.path.join(folder, 'config.yaml')
  with open(path, 'w') as f:
    json.dump(dict(cfg, root_dir=root), f)  # JSON is YAML
  script = 'train_dlsa.py' if kind == 'dlsa' else 'parity_control.py'
  env = {
    'PARITY_SEED': str(seed),
    'PARITY_NUM_CLASS': str(num_classes),
    'PARITY_NUM_VAL': str(len(labels['val'])),
    'PARITY_SELECT': select,
    # The authors' score on test (balanced); ours on the validation rows.
    'PARITY_METRIC': metric if select == 'val' else 'image_mean',
  }
  cmd = [args.torch_python, script, '--cfg', path, '--name', name]
  if flows_of:
    flows = [
      os.path.join(
        root, os.path.basename(flows_of) + '_run', f'ft_models_D{d}.t7'
      )
      for d in range(1, cfg['max_depth'] + 1)
    ]
    cmd.append('--ft_model_weight=' + ','.join(flows))
  wall = _run(cmd, code, os.path.join(folder, 'log.txt'), env)
  import numpy as np  # pylint: disable=g-import-not-at-top

  pred = np.load(os.path.join(root, name, 'parity_test_pred.npy'))
  with open(os.path.join(folder, 'log.txt')) as f:
    chosen = results.dlsa_chosen_epochs(f.read())
  return dict(
    results.dlsa_result(pred, labels['val'], labels['test']),
    chosen_epochs=chosen,
    run_wall_s=wall,
  )


# The table.


def collect(out: str) -> dict:
  """{seed: {part: result}} of every finished part under `out`, whichever
  invocation ran it (e.g. MiSLAS for 6 seeds, DLSA for 3)."""
  per_seed = {}
  for folder in glob.glob(os.path.join(out, 'seed_*')):
    seed = int(os.path.basename(folder)[len('seed_') :])
    for done in glob.glob(os.path.join(folder, '*', 'result.json')):
      part_name = os.path.basename(os.path.dirname(done))
      per_seed.setdefault(seed, {})[part_name] = _read_json(done)
  return per_seed


def summarize(per_seed: dict, selections) -> tuple[str, dict]:
  """The Markdown table and the JSON summary of all finished seeds."""
  seeds = sorted(per_seed)
  get = lambda side, key: [per_seed[s].get(side, {}).get(key) for s in seeds]
  rows = []
  if any(get('mislas_stage1', 'top1')):
    rows += [
      (
        'stage 1, last epoch',
        results.compare(
          get('ours', 'top1_stage1'), get('mislas_stage1', 'top1')
        ),
      ),
      (
        'stage 2, last epoch',
        results.compare(
          get('ours', 'top1_stage2'), get('mislas_stage2', 'top1')
        ),
      ),
      (
        'stage 1, MiSLAS best epoch on test (theirs)',
        results.compare(
          get('ours', 'top1_stage1'), get('mislas_stage1', 'top1_best_test')
        ),
      ),
    ]
  if any(get('mislas_stage2_from_ours', 'top1')):
    rows.append(
      (
        "stage 2, both from our stage-1 model (paired by seed)",
        results.paired(
          get('ours', 'top1_stage2'), get('mislas_stage2_from_ours', 'top1')
        ),
      )
    )
  ours_delta = results.deltas(
    get('ours', 'top1_dlsa'), get('ours', 'top1_dlsa_depth0')
  )
  for sel in selections:
    dl, ct = get(f'dlsa_{sel}_dlsa', 'top1'), get(f'dlsa_{sel}_control', 'top1')
    if not any(x is not None for x in dl):
      continue
    rows += [
      (
        f'DLSA (theirs: epochs chosen on {sel})',
        results.compare(get('ours', 'top1_dlsa'), dl),
      ),
      (
        f'DLSA, paired by seed (theirs: on {sel})',
        results.paired(get('ours', 'top1_dlsa'), dl),
      ),
      (
        f'depth-0 control (theirs: on {sel})',
        results.compare(get('ours', 'top1_dlsa_depth0'), ct),
      ),
      (
        f'DLSA − control (theirs: on {sel})',
        results.compare(ours_delta, results.deltas(dl, ct)),
      ),
    ]
  table = results.markdown_table(rows)
  return table, {
    'seeds': seeds,
    'per_seed': per_seed,
    'rows': {name: c for name, c in rows},
  }


def main(argv=None):
  args = parse_args(argv)
  parts = [p for p in args.parts.split(',') if p]
  selections = [s for s in args.dlsa_select.split(',') if s]
  if set(parts) - set(PARTS) or set(selections) - set(SELECTIONS):
    sys.exit(
      f'error: --parts takes {",".join(PARTS)}, --dlsa_select '
      f'{",".join(SELECTIONS)}'
    )
  if args.backbone not in _BLOCKS:
    sys.exit(f'error: --backbone must be one of {", ".join(_BLOCKS)}')
  if (
    ({'mislas', 'cross'} & set(parts) and not args.mislas_repo)
    or ('dlsa' in parts and not args.dlsa_repo)
    or ({'mislas', 'cross', 'dlsa'} & set(parts) and not args.torch_python)
  ):
    sys.exit(
      'error: the mislas and cross parts need --mislas_repo, the dlsa part '
      '--dlsa_repo, both --torch_python'
    )
  seeds = [int(s) for s in args.seeds.split(',')]
  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  from benchmarks.parity import export  # pylint: disable=g-import-not-at-top

  code = {}
  for seed in seeds:
    folder = os.path.join(out, f'seed_{seed}')
    ours_dir = os.path.join(folder, 'ours')
    if 'ours' in parts:
      part(
        f'seed {seed} ours', ours_dir, lambda f, s=seed: run_ours(args, s, f)
      )
    config_path = os.path.join(ours_dir, 'run', 'config.json')
    if not os.path.exists(config_path):
      log(f'seed {seed}: no run of ours in {ours_dir}; its other parts skipped')
      continue
    config = _read_json(config_path)
    if {'mislas', 'cross'} & set(parts):
      data_path = mislas_setup(args, out, config, code)
      if seed == seeds[0]:
        for problem in schedule_problems(config):
          log(f'warning: {problem}')
    if 'mislas' in parts:
      s1 = part(
        f'seed {seed} MiSLAS stage 1',
        os.path.join(folder, 'mislas_stage1'),
        lambda f, s=seed: run_mislas_stage(
          args, s, f, 'stage1', code['mislas'], config, data_path
        ),
      )
      part(
        f'seed {seed} MiSLAS stage 2',
        os.path.join(folder, 'mislas_stage2'),
        lambda f, s=seed: run_mislas_stage(
          args,
          s,
          f,
          'stage2',
          code['mislas'],
          config,
          data_path,
          resume=s1['checkpoint'],
        ),
      )
    if 'cross' in parts:
      part(
        f'seed {seed} MiSLAS stage 2 from our stage 1',
        os.path.join(folder, 'mislas_stage2_from_ours'),
        lambda f, s=seed: run_mislas_from_ours(
          args, s, f, code['mislas'], config, data_path, ours_dir
        ),
      )
    if 'dlsa' in parts:
      if 'dlsa' not in code:
        code['dlsa'] = edits.prepare(
          args.dlsa_repo,
          os.path.join(out, 'code', 'dlsa'),
          edits.dlsa_edits(),
          edits.DLSA_FILES,
        )
      feat_dir = os.path.join(folder, 'dlsa_features')

      def features(f, workdir=os.path.join(ours_dir, 'run')):
        splits = export.dlsa_splits(
          export.stage1_features(workdir),
          config['data']['num_classes'],
          config['dlsa']['val_per_class'],
        )
        n_val = export.write_dlsa_h5(f, splits)
        return {
          'n_train': len(splits['train'][1]),
          'n_val': n_val,
          'val_labels': splits['val'][1].tolist(),
          'test_labels': splits['test'][1].tolist(),
        }

      feats = part(f'seed {seed} stage-1 features for DLSA', feat_dir, features)
      labels = {'val': feats['val_labels'], 'test': feats['test_labels']}
      cfg = dlsa_yaml(config, args, feat_dir, folder, feats['n_train'])
      for i, sel in enumerate(selections):
        for kind in ('dlsa', 'control'):
          flows_of = (
            os.path.join(folder, f'dlsa_{selections[0]}_dlsa')
            if i and kind == 'dlsa'
            else None
          )
          part(
            f'seed {seed} authors\' DLSA {kind}, epochs chosen on {sel}',
            os.path.join(folder, f'dlsa_{sel}_{kind}'),
            lambda f, s=seed, k=kind, c=sel, o=flows_of: run_dlsa_authors(
              args,
              s,
              f,
              code['dlsa'],
              cfg,
              k,
              c,
              labels,
              config['data']['num_classes'],
              config['eval']['select_metric'],
              o,
            ),
          )
  table, summary = summarize(collect(out), SELECTIONS)
  summary['args'] = vars(args)
  _write_json(os.path.join(out, 'parity.json'), summary)
  with open(os.path.join(out, 'parity.md'), 'w') as f:
    f.write(table + '\n')
  print(
    f'\n{table}\n\n(mean ± sample std over seeds; SE = sqrt(s_o²/n_o + '
    f's_t²/n_t); written to {out}/parity.md and parity.json)'
  )


if __name__ == '__main__':
  main()
