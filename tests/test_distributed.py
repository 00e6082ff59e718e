"""Multi-process runs for real: 2 processes × 2 CPU devices (a localhost
coordinator, collectives over loopback) against 1 process × 4 devices, and
the launch settings `--distributed` reads from the environment."""

import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from lcreg_jax import distributed
from lcreg_jax import errors
from lcreg_jax import inference
from tests import cli
from tests import conftest
from tests.cli import ROOT
from tests.cli import run_cli
from tests.data import image_tree
from tests.data import tfds_build


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def start(workdir, *args, processes=2, devices_each=2):
  """`python -m lcreg_jax.main --distributed` as `processes` processes:
  [(Popen, stdout file, stderr file)]. Output goes to files: a process
  blocked on a full pipe would stall the collectives of the others."""
  env = dict(
    os.environ,
    JAX_COORDINATOR_ADDRESS=f'localhost:{_free_port()}',
    JAX_NUM_PROCESSES=str(processes),
    XLA_FLAGS=(
      f'--xla_force_host_platform_device_count={devices_each} '
      + conftest.XLA_FLAGS
    ),
  )
  running = []
  for i in range(processes):
    out, err = (open(f'{workdir}.p{i}.{s}', 'w+') for s in ('out', 'err'))
    running.append(
      (
        subprocess.Popen(
          [
            sys.executable,
            '-m',
            'lcreg_jax.main',
            '--distributed',
            f'--workdir={workdir}',
            *args,
          ],
          cwd=ROOT,
          env=dict(env, JAX_PROCESS_ID=str(i)),
          stdout=out,
          stderr=err,
        ),
        out,
        err,
      )
    )
  return running


def finish(running, timeout=500):
  """Each process's (returncode, stdout, stderr)."""
  results = []
  try:
    for p, out, err in running:
      code = p.wait(timeout=timeout)
      out.seek(0)
      err.seek(0)
      results.append((code, out.read(), err.read()))
  finally:
    for p, out, err in running:
      p.kill()
      out.close()
      err.close()
  return results


def launch(workdir, *args, **kw):
  return finish(start(workdir, *args, **kw))


# Short DLSA: a flow and a classifier per stage, the final classifier and
# the depth-0 control, each checked on validation every 10 steps.
DLSA = (
  '--config.dlsa.enabled=True',
  '--config.dlsa.flow_steps=20',
  '--config.dlsa.classifier_steps=20',
  '--config.dlsa.eval_every=10',
)
# tests/tiny.py with a validation split, best-on-validation checked every 2
# of stage 1's 6 steps.
WITH_VAL = (
  '--config=tests/tiny.py',
  '--config.data.val_per_class=5',
  '--config.eval.val_every=2',
)
RUNS = {
  # class-wise ISDA (plain CE, no latents, no mixup), τ-normalisation.
  'isda_tau_norm': (
    *WITH_VAL,
    '--config.model.latent.enabled=False',
    '--config.stage1.mixup_alpha=0.0',
    '--config.model.class_isda=full',
    '--config.stage2.method=tau_norm',
  ),
  # LCReg with LDAM-DRW on the cosine head, MiSLAS's stage 2, then DLSA.
  'ldam_drw_mislas': (
    *WITH_VAL,
    *DLSA,
    '--config.stage1.loss=ldam',
    '--config.stage1.reweight=drw',
    '--config.stage1.drw_epoch=0.1',
    '--config.model.head=normed',
  ),
}


def reports(workdir) -> dict:
  return {
    os.path.basename(os.path.dirname(p)): json.load(open(p))
    for p in glob.glob(f'{workdir}/*/report.json')
  }


def written(workdir) -> list[str]:
  """The files and folders a run wrote, two levels deep, with TensorBoard
  event files counted by folder (their names hold host and time)."""
  out = []
  for path in glob.glob(f'{workdir}/*') + glob.glob(f'{workdir}/*/*'):
    rel = os.path.relpath(path, workdir)
    out.append(re.sub(r'events\.out\.tfevents\..*', 'events', rel))
  return sorted(out)


def assert_same_reports(one, two):
  """Every stage's report from 2 × 2 devices equals 1 × 4's: the same
  examples counted once, the same choices, the same accuracies (float32
  round-off aside: the cross-process all-reduce sums in another order)."""
  a, b = reports(one), reports(two)
  assert a.keys() == b.keys()
  for stage in a:
    assert a[stage]['num_examples'] == b[stage]['num_examples'] == 300, stage
    for key in (
      'top1',
      'top1_best_val',
      'many',
      'medium',
      'few',
      'tau',
      'method',
      'select_metric',
      'val_top1',
      'val_class_mean_top1',
      'val_accuracy',
    ):
      assert a[stage].get(key) == b[stage].get(key), (stage, key)
    np.testing.assert_allclose(b[stage]['nll'], a[stage]['nll'], rtol=1e-4)
    if 'best_on_val' in a[stage]:
      for key in ('step', 'select_metric', 'val_class_mean_top1'):
        assert a[stage]['best_on_val'][key] == b[stage]['best_on_val'][key], (
          stage,
          key,
        )
  for key in ('share', 'accuracy', 'train_routed', 'flow_step'):
    assert [
      r.get(key) for r in a.get('dlsa', {}).get('routing', {}).values()
    ] == [r.get(key) for r in b.get('dlsa', {}).get('routing', {}).values()], (
      key
    )


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(RUNS))
def test_two_processes_run_every_stage_like_one(name, tmp_path):
  """Stage 1 with best-on-validation, a stage-2 method and DLSA (flows,
  classifiers, routing, the depth-0 control) on 2 processes × 2 devices
  give 1 process × 4 devices' reports, and one set of files."""
  one, two = tmp_path / 'one', tmp_path / 'two'
  single = cli.run_cli(*RUNS[name], f'--workdir={one}')
  assert single.returncode == 0, single.stderr[-3000:]
  results = launch(str(two), *RUNS[name])
  for code, _, err in results:
    assert code == 0, err[-3000:]
  assert_same_reports(one, two)
  assert reports(one)['stage1']['best_on_val']['step'] in (2, 4, 6)
  assert written(one) == written(two)
  # One writer: one TensorBoard file, one summary table.
  assert len(glob.glob(str(two / 'stage1' / 'events.out.tfevents.*'))) == 1
  assert '| stage2 |' in results[0][1] and '| stage2 |' not in results[1][1]
  if name == 'ldam_drw_mislas':
    assert reports(two)['dlsa']['routing'] and 'dlsa_depth0' in reports(two)
    # Same global batches, same updates: the stage-2 parameters agree to
    # float32 round-off.
    (step_a, pa), (step_b, pb) = (
      cli.final_params(d / 'stage2') for d in (one, two)
    )
    assert step_a == step_b == 4
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
      np.testing.assert_allclose(
        np.asarray(y), np.asarray(x), rtol=2e-4, atol=2e-5
      )
    # A workdir that several processes wrote loads and predicts as reported.
    model = inference.load_workdir(str(two), stage='stage2')
    images, labels = model.eval_split('test')
    top1 = np.mean(model.predict(images)['probs'].argmax(-1) == labels)
    assert top1 == pytest.approx(reports(two)['stage2']['top1'])


def _streamed_inputs(root) -> dict:
  """A JPEG tree with train/val/test list files, and the same images as a
  TFDS build: {'list': overrides, 'tfds': overrides} of
  configs/imagenet_lt.py at tiny sizes (ResNet-8, 32-pixel crops)."""
  counts = [16, 8, 4, 4]
  labels = np.repeat(np.arange(4), counts)
  splits = {
    'train': labels,
    'val': np.repeat(np.arange(4), 2),
    'test': np.repeat(np.arange(4), 3),
  }
  photos = {
    s: image_tree.random_photos(len(y), seed=i, sizes=((50, 40), (40, 60)))
    for i, (s, y) in enumerate(splits.items())
  }
  lists = {
    s: image_tree.write_tree(
      root / 'tree', photos[s], y, f'{s}.txt', fmt='png', subdir=s
    )
    for s, y in splits.items()
  }
  tfds_build.write_build(
    root / 'tfds',
    'lcreg_pods_tiny',
    {
      s: (photos[s], y, [f'{s}/{i}.png' for i in range(len(y))])
      for s, y in splits.items()
    },
    num_classes=4,
  )
  tiny = (
    '--config=configs/imagenet_lt.py',
    '--config.data.num_classes=4',
    '--config.data.image_size=32',
    '--config.data.eval_resize=36',
    '--config.model.backbone=resnet8',
    '--config.model.latent.num_latents=4',
    # A small learning rate: on these few smooth images the update of
    # the first BatchNorm magnifies float32 round-off, and with the
    # default rate even 1 process × 2 devices and 1 × 4 differ in the
    # third digit of the NLL.
    '--config.stage1.steps=4',
    '--config.stage1.batch_size=8',
    '--config.stage1.lr=0.005',
    '--config.stage2.steps=2',
    '--config.stage2.batch_size=8',
    '--config.eval.batch_size=8',
    '--config.eval.plots=False',
    '--config.eval.val_every=2',
    '--config.log_every=1',
    '--config.checkpoint_every=2',
  )
  return {
    'list': (
      *tiny,
      f'--config.data.image_root={root / "tree"}',
      *(f'--config.data.{s}_list={lists[s]}' for s in splits),
    ),
    'tfds': (
      *tiny,
      '--config.data.source=tfds_stream',
      '--config.data.tfds_name=lcreg_pods_tiny',
      f'--config.data.tfds_data_dir={root / "tfds"}',
      '--config.data.tfds_val_split=val',
      '--config.data.image_root=',
      *(f'--config.data.{s}_list=' for s in splits),
    ),
  }


@pytest.mark.slow
def test_streamed_tfds_on_two_processes_like_list_files_on_one(tmp_path):
  """configs/imagenet_lt.py's input streamed from a TFDS build with a
  validation split on 2 processes × 2 devices: the same reports (and
  best-on-validation step) as the same images from list files on 1 × 4."""
  inputs = _streamed_inputs(tmp_path)
  single = cli.run_cli(*inputs['list'], f'--workdir={tmp_path / "one"}')
  assert single.returncode == 0, single.stderr[-3000:]
  # 2 processes read the TFDS build (the list files stream through the same
  # code with another reader; on one process the two train alike:
  # tests/stages/test_imagenet_scale.py).
  for name, args in (('tfds', inputs['tfds']),):
    for code, _, err in launch(str(tmp_path / name), *args):
      assert code == 0, (name, err[-3000:])
    a, b = reports(tmp_path / 'one'), reports(tmp_path / name)
    assert a.keys() == b.keys() == {'stage1', 'stage2'}
    for stage in a:
      assert b[stage]['num_examples'] == 12
      for key in ('top1', 'top1_best_val', 'many', 'medium', 'few'):
        assert a[stage].get(key) == b[stage].get(key), (name, stage, key)
      np.testing.assert_allclose(b[stage]['nll'], a[stage]['nll'], rtol=1e-3)
    assert (
      a['stage1']['best_on_val']['step'] == b['stage1']['best_on_val']['step']
    )


def _signal_when_logged(running, text, deadline_s=300):
  """SIGTERM to every process once process 0 has logged `text` (as a
  scheduler sends it); each process's (returncode, stdout, stderr)."""
  deadline = time.time() + deadline_s
  while text not in open(running[0][2].name).read():
    assert (
      all(p.poll() is None for p, _, _ in running) and time.time() < deadline
    )
    time.sleep(0.05)
  for p, _, _ in running:
    p.send_signal(signal.SIGTERM)
  signalled = time.time()
  results = finish(running, timeout=120)
  assert time.time() - signalled < 60  # stopped within seconds
  return results


def _stop_message(results) -> str:
  """The one place where every process stopped (they must agree)."""
  where = set()
  for code, _, err in results:
    assert code == 143, err[-3000:]
    found = re.search(
      r'stopped by SIGTERM \(preemption\) (before \w+ trained a step|'
      r'at step \d+ of \w+)',
      err,
    )
    assert found and 'Traceback' not in err, err[-3000:]
    where.add(found.group(1))
  assert len(where) == 1, where
  return where.pop()


@pytest.mark.slow
def test_sigterm_stops_both_processes_at_one_point_and_they_resume(tmp_path):
  """SIGTERM to both processes of a 2-process run, twice: during stage 1
  (both save the same step), then after stage 1's last step, during its
  final evaluation, with stage 2 shorter than stage 1 (both stop before
  stage 2). Each time the same command resumes, and the run ends bit for
  bit where an uninterrupted 2-process run does. (When each loop reported its own step number to
  JAX's preemption service, the second signal was lost: its sync point lay
  beyond stage 2's last step, and the run went on to the end.)"""
  work = tmp_path / 'work'
  args = (
    '--config=tests/tiny.py',
    '--config.stage1.steps=16',
    '--config.stage2.steps=4',
    '--config.checkpoint_every=1000',
    '--config.log_every=1',
  )
  where = _stop_message(_signal_when_logged(start(str(work), *args), '] [5] '))
  step = int(re.fullmatch(r'at step (\d+) of stage1', where).group(1))
  assert 5 <= step < 16 and os.path.isdir(
    work / 'stage1' / 'checkpoints' / str(step)
  )
  running = start(str(work), *args)
  where = _stop_message(_signal_when_logged(running, '] [16] '))
  assert where == 'before stage2 trained a step' or where.endswith(
    ' of stage2'
  ), where
  assert (
    f'stage1: resumed from step {step} of 16' in open(running[0][2].name).read()
  )
  assert not os.path.exists(work / 'stage2' / 'report.json')
  resumed = launch(str(work), *args)
  for code, _, err in resumed:
    assert code == 0, err[-3000:]
  assert 'stage1: resumed from step 16 of 16' in resumed[0][2]  # not retrained
  # The reference is an uninterrupted run on the same 2 processes: 1 process
  # x 4 devices reduces in another order, and 16 steps amplify that
  # round-off enough to move a test prediction.
  for code, _, err in launch(str(tmp_path / 'whole'), *args):
    assert code == 0, err[-3000:]
  a, b = reports(tmp_path / 'whole'), reports(work)
  assert a.keys() == b.keys() == {'stage1', 'stage2'}
  for stage in a:
    assert a[stage]['top1'] == b[stage]['top1'], stage
    assert a[stage]['nll'] == b[stage]['nll'], stage
    (step_a, pa), (step_b, pb) = (
      cli.final_params(d / stage) for d in (tmp_path / 'whole', work)
    )
    assert step_a == step_b == {'stage1': 16, 'stage2': 4}[stage]
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
      np.testing.assert_array_equal(np.asarray(y), np.asarray(x))


@pytest.mark.parametrize(
  'env,message',
  [
    (
      dict(JAX_NUM_PROCESSES='2'),
      'JAX_NUM_PROCESSES set but not JAX_COORDINATOR_ADDRESS, JAX_PROCESS_ID',
    ),
    (
      dict(
        JAX_COORDINATOR_ADDRESS='h:1',
        JAX_NUM_PROCESSES='two',
        JAX_PROCESS_ID='0',
      ),
      "JAX_NUM_PROCESSES='two' is not an integer",
    ),
    (
      dict(
        JAX_COORDINATOR_ADDRESS='h:1', JAX_NUM_PROCESSES='2', JAX_PROCESS_ID='2'
      ),
      'JAX_PROCESS_ID=2 with JAX_NUM_PROCESSES=2',
    ),
  ],
)
def test_launch_settings_are_checked(env, message):
  with pytest.raises(errors.ConfigError, match=message):
    distributed.initialize(env)


def test_a_bad_launch_setting_is_a_clear_error_from_the_command(tmp_path):
  res = run_cli(
    '--distributed',
    '--config=tests/tiny.py',
    f'--workdir={tmp_path}',
    JAX_NUM_PROCESSES='2',
    JAX_PROCESS_ID='',
    JAX_COORDINATOR_ADDRESS='',
  )
  assert res.returncode == 2
  assert 'error: JAX_NUM_PROCESSES set but not' in res.stderr
  assert 'Traceback' not in res.stderr
