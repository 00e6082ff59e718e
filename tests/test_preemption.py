"""SIGTERM (a preemption) during training: the run saves the step it
stopped at, says where, exits 143, and the same command resumes from there
to exactly the parameters of an uninterrupted run."""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from lcreg_jax import preemption
from tests import cli

ARGS = (
  '--config=tests/tiny.py',
  '--config.stage1.steps=20',
  '--config.stage2.enabled=False',
  '--config.checkpoint_every=1000',
  '--config.log_every=1',
)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_rerun_resumes_exactly(tmp_path):
  cut = tmp_path / 'cut'
  with open(tmp_path / 'err.txt', 'w+') as err:
    proc = subprocess.Popen(
      [sys.executable, '-m', 'lcreg_jax.main', *ARGS, f'--workdir={cut}'],
      cwd=cli.ROOT,
      stdout=subprocess.DEVNULL,
      stderr=err,
    )
    deadline = time.time() + 300
    while '] [5] ' not in (tmp_path / 'err.txt').read_text():  # step 5 logged
      assert proc.poll() is None and time.time() < deadline, (
        tmp_path / 'err.txt'
      ).read_text()
      time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    err.seek(0)
    stderr = err.read()
  assert code == 143, stderr[-3000:]
  found = re.search(
    r'stopped by SIGTERM \(preemption\) at step (\d+) of stage1: a checkpoint '
    r'of that step is in (\S+)\. Run the same command again',
    stderr,
  )
  assert found, stderr[-3000:]
  step = int(found.group(1))
  assert 5 <= step < 20 and 'Traceback' not in stderr
  assert found.group(2) == str(cut / 'stage1' / 'checkpoints')
  assert os.path.isdir(cut / 'stage1' / 'checkpoints' / str(step))
  again = cli.run_cli(*ARGS, f'--workdir={cut}')
  assert again.returncode == 0, again.stderr[-3000:]
  assert f'resumed from step {step} of 20' in again.stderr
  whole = cli.run_cli(*ARGS, f'--workdir={tmp_path / "whole"}')
  assert whole.returncode == 0, whole.stderr[-3000:]
  (a_step, a), (b_step, b) = (
    cli.final_params(d / 'stage1') for d in (cut, tmp_path / 'whole')
  )
  assert a_step == b_step == 20
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_the_message_for_a_stage_that_has_not_started():
  assert 'before stage2 trained a step' in preemption.stopped_message(
    'stage2', 0, '/w'
  )
  assert 'at step 7 of stage1' in preemption.stopped_message(
    'stage1', 7, '/w/c'
  )


def test_several_processes_report_a_count_that_only_grows(monkeypatch):
  """With several processes every agreed point reports the next number of
  one run-wide count, whatever loop asks: a sync point JAX's service sets
  during one loop is reached in the next loop too."""
  seen = []
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(
    preemption.multihost_utils,
    'reached_preemption_sync_point',
    lambda n: seen.append(n) or n == seen[0] + 3,
  )
  answers = [
    preemption.reached() for _ in range(3)
  ]  # e.g. stage 1's last steps
  with pytest.raises(
    preemption.Preempted, match='before stage2 trained a step'
  ):
    preemption.stop_between('stage2', '/w')  # the 4th point
  assert not preemption.reached()  # the 5th
  assert answers == [False, False, False]
  assert seen == list(range(seen[0], seen[0] + 5))


def test_a_single_process_stops_at_the_next_point_after_the_signal(monkeypatch):
  monkeypatch.setattr(preemption, '_signalled', preemption.threading.Event())
  assert not preemption.reached()
  preemption.stop_between('dlsa', '/w')  # no signal: goes on
  preemption._signalled.set()
  assert preemption.reached()
  with pytest.raises(
    preemption.Preempted, match='parts before it are saved in /w'
  ):
    preemption.stop_between('dlsa', '/w')
