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
from tests import cli
from tests.cli import ROOT
from tests.cli import run_cli


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def start(workdir, *args, processes=2, devices_each=2):
  """`python -m lcreg_jax.main --distributed` as `processes` processes:
  [(Popen, stdout file, stderr file)]. Output goes to files: a process
  blocked on a full pipe would stall the collectives of the others."""
  env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f'localhost:{_free_port()}',
             JAX_NUM_PROCESSES=str(processes), XLA_FLAGS=(
                 f'--xla_force_host_platform_device_count={devices_each} '
                 '--xla_backend_optimization_level=0'))
  running = []
  for i in range(processes):
    out, err = (open(f'{workdir}.p{i}.{s}', 'w+') for s in ('out', 'err'))
    running.append((subprocess.Popen(
        [sys.executable, '-m', 'lcreg_jax.main', '--distributed', f'--workdir={workdir}',
         *args], cwd=ROOT, env=dict(env, JAX_PROCESS_ID=str(i)), stdout=out, stderr=err),
                    out, err))
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


@pytest.mark.slow
def test_two_processes_train_and_evaluate_like_one(finished_run, tmp_path):
  one, _ = finished_run            # tests/tiny.py, 1 process × 4 devices
  two = tmp_path / 'two'
  results = launch(str(two), '--config=tests/tiny.py')
  for code, _, err in results:
    assert code == 0, err[-3000:]
  for stage in ('stage1', 'stage2'):
    a = json.load(open(one / stage / 'report.json'))
    b = json.load(open(two / stage / 'report.json'))
    # Every test example counted once: same count, same per-class accuracy.
    assert a['num_examples'] == b['num_examples'] == 300
    assert a['top1'] == b['top1']
    np.testing.assert_allclose(b['nll'], a['nll'], rtol=1e-5)
    # Same global batches, same updates: the parameters agree to float32
    # round-off (the cross-process all-reduce sums in another order).
    (step_a, pa), (step_b, pb) = cli.final_params(one / stage), cli.final_params(two / stage)
    assert step_a == step_b
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
      np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=2e-4, atol=2e-5)
    # One writer: one TensorBoard file, one report.
    assert len(glob.glob(str(two / stage / 'events.out.tfevents.*'))) == 1
  assert '| stage1 |' in results[0][1] and '| stage1 |' not in results[1][1]
  assert json.load(open(two / 'summary.json')).keys() == json.load(
      open(one / 'summary.json')).keys()


@pytest.mark.slow
def test_sigterm_stops_both_processes_at_one_step_and_they_resume(tmp_path):
  """SIGTERM to both processes (as a scheduler sends it): JAX's preemption
  service makes them agree on a step, both save it and exit 143, and the
  same command resumes from it."""
  work = tmp_path / 'work'
  args = ('--config=tests/tiny.py', '--config.stage1.steps=60',
          '--config.stage2.enabled=False', '--config.checkpoint_every=1000',
          '--config.log_every=1')
  running = start(str(work), *args)
  deadline = time.time() + 300
  while '] [5] ' not in open(running[0][2].name).read():      # step 5 logged
    assert all(p.poll() is None for p, _, _ in running) and time.time() < deadline
    time.sleep(0.2)
  for p, _, _ in running:
    p.send_signal(signal.SIGTERM)
  results = finish(running, timeout=120)
  steps = set()
  for code, _, err in results:
    assert code == 143, err[-3000:]
    found = re.search(r'stopped by SIGTERM \(preemption\) at step (\d+) of stage1', err)
    assert found, err[-3000:]
    steps.add(int(found.group(1)))
  assert len(steps) == 1 and 5 <= min(steps) < 60
  step = steps.pop()
  assert os.path.isdir(work / 'stage1' / 'checkpoints' / str(step))
  resumed = launch(str(work), *args)
  for code, _, err in resumed:
    assert code == 0, err[-3000:]
    assert f'resumed from step {step} of 60' in err
  assert cli.final_params(work / 'stage1')[0] == 60


@pytest.mark.parametrize('env,message', [
    (dict(JAX_NUM_PROCESSES='2'), 'JAX_NUM_PROCESSES set but not JAX_COORDINATOR_ADDRESS, '
                                  'JAX_PROCESS_ID'),
    (dict(JAX_COORDINATOR_ADDRESS='h:1', JAX_NUM_PROCESSES='two', JAX_PROCESS_ID='0'),
     "JAX_NUM_PROCESSES='two' is not an integer"),
    (dict(JAX_COORDINATOR_ADDRESS='h:1', JAX_NUM_PROCESSES='2', JAX_PROCESS_ID='2'),
     'JAX_PROCESS_ID=2 with JAX_NUM_PROCESSES=2'),
])
def test_launch_settings_are_checked(env, message):
  with pytest.raises(errors.ConfigError, match=message):
    distributed.initialize(env)


def test_a_bad_launch_setting_is_a_clear_error_from_the_command(tmp_path):
  res = run_cli('--distributed', '--config=tests/tiny.py', f'--workdir={tmp_path}',
                JAX_NUM_PROCESSES='2', JAX_PROCESS_ID='', JAX_COORDINATOR_ADDRESS='')
  assert res.returncode == 2
  assert 'error: JAX_NUM_PROCESSES set but not' in res.stderr
  assert 'Traceback' not in res.stderr
