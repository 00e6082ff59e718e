"""The stages on a tiny ResNet-8 digits run: kill anywhere and resume to the
same parameters, stage 2 and DLSA from a stage-1 checkpoint, config.json."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lcreg_jax import errors
from lcreg_jax import stages
from tests import tiny

pytestmark = pytest.mark.slow


class _Kill(Exception):
  pass


def _final_checkpoint(workdir, stage):
  """The arrays of a stage's final checkpoint, as saved."""
  directory = os.path.join(workdir, stage, 'checkpoints')
  step = max(int(p) for p in os.listdir(directory) if p.isdigit())
  return ocp.StandardCheckpointer().restore(
      os.path.join(directory, str(step), 'default'))


def test_kill_anywhere_and_resume_reaches_the_same_checkpoints(
    finished_run, tmp_path):
  work = str(tmp_path / 'killed')
  # Killed between checkpoints in stage 1 (resumes from step 2, replays 3),
  # then in stage 2 right after a checkpoint.
  for kill in (('stage1', 3), ('stage2', 2)):
    def hook(stage, step, state, kill=kill):
      if (stage, step) == kill:
        raise _Kill()
    with pytest.raises(_Kill):
      stages.train_and_evaluate(tiny.tiny_config(), work, hooks=[hook])
  rows = stages.train_and_evaluate(tiny.tiny_config(), work)
  # The reference is the same config run uninterrupted by the real command.
  reference = str(finished_run[0])
  for stage in ('stage1', 'stage2'):
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        _final_checkpoint(work, stage), _final_checkpoint(reference, stage))
    with open(os.path.join(reference, stage, 'report.json')) as f:
      assert rows[stage]['top1'] == json.load(f)['top1']
  # The resolved config is recorded once; reruns with the same config
  # leave it alone.
  config = json.load(open(os.path.join(work, 'config.json')))
  assert config['stage2']['shift_bn'] is True
  assert config['stage2']['las_head'] == 0.1      # from the cifar10 row
  assert [p for p in os.listdir(work) if p.startswith('config')] == [
      'config.json']


def test_stage2_alone_from_a_stage1_checkpoint_then_dlsa(tmp_path, capsys):
  cfg = tiny.tiny_config()
  cfg.stage2.enabled = False
  first = stages.train_and_evaluate(cfg, str(tmp_path / 'a'))
  assert set(first) == {'stage1'}

  cfg.stage1.enabled = False
  cfg.stage2.enabled = True
  cfg.stage2.init_from = str(tmp_path / 'a' / 'stage1' / 'checkpoints')
  cfg.dlsa.update(enabled=True, flow_steps=30, classifier_steps=30,
                  num_clusters=16, eval_every=15, val_per_class=5)
  rows = stages.train_and_evaluate(cfg, str(tmp_path / 'b'))
  assert set(rows) == {'stage2', 'dlsa'}
  report = json.load(open(tmp_path / 'b' / 'dlsa' / 'report.json'))
  routing = report['routing']
  np.testing.assert_allclose(sum(r['share'] for r in routing.values()), 1.0)
  # Per-stage accuracies weighted by shares give back the overall top-1.
  np.testing.assert_allclose(
      sum(r['share'] * (r['accuracy'] or 0) for r in routing.values()),
      report['top1'], atol=1e-6)
  summary = json.load(open(tmp_path / 'b' / 'summary.json'))
  assert summary['stage2']['top1'] == rows['stage2']['top1']
  out = capsys.readouterr().out
  assert '| stage2 |' in out and '| dlsa |' in out and 'DLSA routing' in out
  assert not os.path.exists(tmp_path / 'b' / 'stage1')
  # A changed config keeps the earlier config.json beside the new one.
  cfg.dlsa.enabled = False
  stages.train_and_evaluate(cfg, str(tmp_path / 'b'))
  kept = [p for p in os.listdir(tmp_path / 'b') if p.startswith('config-')]
  assert len(kept) == 1
  assert json.load(open(tmp_path / 'b' / kept[0]))['dlsa']['enabled']


def test_unfinished_stage1_is_not_used_by_stage2(tmp_path):
  cfg = tiny.tiny_config()

  def kill(stage, step, state):
    if (stage, step) == ('stage1', 5):
      raise _Kill()

  with pytest.raises(_Kill):
    stages.train_and_evaluate(cfg, str(tmp_path), hooks=[kill])
  cfg.stage1.enabled = False
  with pytest.raises(errors.CheckpointError, match='stopped at step 4 of 6'):
    stages.train_and_evaluate(cfg, str(tmp_path))
