"""The stages on a tiny ResNet-8 digits run: kill anywhere and resume to the
same checkpoints, stage 2 and DLSA from a stage-1 checkpoint, the workdir."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lcreg_jax import config as config_lib
from lcreg_jax import errors
from lcreg_jax import stages
from tests import killing
from tests import tiny

pytestmark = pytest.mark.slow


def _final_checkpoint(workdir, stage):
  """The arrays of a stage's final checkpoint, as saved."""
  directory = os.path.join(workdir, stage, 'checkpoints')
  step = max(int(p) for p in os.listdir(directory) if p.isdigit())
  return ocp.StandardCheckpointer().restore(
    os.path.join(directory, str(step), 'default')
  )


def test_kill_anywhere_and_resume_reaches_the_same_checkpoints(
  finished_run, tmp_path
):
  work = str(tmp_path / 'killed')

  def run(kill_at=None, **changes):
    cfg = tiny.tiny_config()
    for key, value in changes.items():
      cfg[key].enabled = value
    return stages.train_and_evaluate(
      cfg, work, hooks=[killing.kill_at(*kill_at)] if kill_at else []
    )

  # Killed between checkpoints in stage 1: it saved steps 2 and 4 only...
  with pytest.raises(killing.Kill):
    run(kill_at=('stage1', 5))
  # ...so stage 2 on its own refuses the unfinished stage 1...
  with pytest.raises(errors.CheckpointError, match='stopped at step 4 of 6'):
    run(stage1=False)
  # ...and the next run resumes stage 1 from step 4; killed again in stage 2
  # right after a checkpoint, then run to the end.
  with pytest.raises(killing.Kill):
    run(kill_at=('stage2', 2))
  rows = run()
  # The reference is the same config run uninterrupted by the real command.
  reference = str(finished_run[0])
  for stage in ('stage1', 'stage2'):
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
      _final_checkpoint(work, stage),
      _final_checkpoint(reference, stage),
    )
    with open(os.path.join(reference, stage, 'report.json')) as f:
      assert rows[stage]['top1'] == json.load(f)['top1']
  config = json.load(open(os.path.join(work, 'config.json')))
  assert config['stage2']['shift_bn'] is True
  assert config['stage2']['las_head'] == 0.1  # from the cifar10 row


def test_stage2_alone_from_a_stage1_checkpoint_then_dlsa(
  finished_run, tmp_path, capsys
):
  cfg = tiny.tiny_config()
  cfg.stage1.enabled = False
  cfg.stage2.init_from = str(finished_run[0] / 'stage1' / 'checkpoints')
  cfg.dlsa.update(
    enabled=True,
    flow_steps=30,
    classifier_steps=30,
    num_clusters=16,
    eval_every=15,
    val_per_class=5,
  )
  rows = stages.train_and_evaluate(cfg, str(tmp_path))
  assert set(rows) == {'stage2', 'dlsa'}
  # Stage 2 from the same stage-1 checkpoint is the finished run's stage 2.
  with open(finished_run[0] / 'stage2' / 'report.json') as f:
    assert rows['stage2']['top1'] == json.load(f)['top1']
  report = json.load(open(tmp_path / 'dlsa' / 'report.json'))
  routing = report['routing']
  np.testing.assert_allclose(sum(r['share'] for r in routing.values()), 1.0)
  # Per-stage accuracies weighted by shares give back the overall top-1.
  np.testing.assert_allclose(
    sum(r['share'] * (r['accuracy'] or 0) for r in routing.values()),
    report['top1'],
    atol=1e-6,
  )
  summary = json.load(open(tmp_path / 'summary.json'))
  assert summary['stage2']['top1'] == rows['stage2']['top1']
  out = capsys.readouterr().out
  assert '| stage2 |' in out and '| dlsa |' in out and 'DLSA routing' in out
  assert not os.path.exists(tmp_path / 'stage1')


def test_record_config_keeps_an_earlier_different_config(tmp_path):
  config = config_lib.resolve_and_validate(
    tiny.tiny_config(), num_visible_devices=1
  )
  stages.record_config(str(tmp_path), config)
  stages.record_config(str(tmp_path), config)  # the same: nothing new
  assert os.listdir(tmp_path) == ['config.json']
  changed = config.copy_and_resolve_references()
  changed.seed = 7
  stages.record_config(str(tmp_path), changed)
  kept = [p for p in os.listdir(tmp_path) if p.startswith('config-')]
  assert len(kept) == 1
  assert json.load(open(tmp_path / kept[0]))['seed'] == 0
  assert json.load(open(tmp_path / 'config.json'))['seed'] == 7


def test_workdir_that_is_a_file_is_refused(tmp_path):
  (tmp_path / 'f').write_text('x')
  with pytest.raises(errors.ConfigError, match='is a file'):
    stages.check_workdir(str(tmp_path / 'f'))


@pytest.mark.slow
def test_a_signal_during_stage1s_evaluation_stops_before_a_posthoc_stage2(
  tmp_path, monkeypatch
):
  """τ-normalisation trains no loop, so only the agreed point between the
  stages stops a run signalled after stage 1's last step; the re-run
  resumes (stage 1 is not retrained) and finishes."""
  from lcreg_jax import preemption  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(preemption, '_signalled', preemption.threading.Event())
  cfg = tiny.tiny_config()
  cfg.data.val_per_class = 5
  cfg.stage2.method = 'tau_norm'
  steps = config_lib.resolve_and_validate(cfg).stage1.steps

  def signal_at_the_end(name, step, state):
    del state
    if (name, step) == ('stage1', steps):
      preemption._signalled.set()  # pylint: disable=protected-access

  with pytest.raises(
    preemption.Preempted, match='before stage2 trained a step'
  ):
    stages.train_and_evaluate(cfg, str(tmp_path), hooks=[signal_at_the_end])
  assert os.path.exists(tmp_path / 'stage1' / 'report.json')
  assert not os.path.exists(tmp_path / 'stage2' / 'report.json')
  preemption._signalled.clear()  # pylint: disable=protected-access
  rows = stages.train_and_evaluate(cfg, str(tmp_path))
  assert rows['stage2']['method'] == 'tau_norm'
  saved = os.listdir(tmp_path / 'stage1' / 'checkpoints')
  assert max(int(p) for p in saved if p.isdigit()) == steps
