"""The stage orchestration: stage 2 alone from a checkpoint, DLSA end to end."""

import json
import os

import numpy as np

from lcreg_jax import run
from tests import tiny


def test_stage2_alone_from_a_stage1_checkpoint_then_dlsa(tmp_path, capsys):
  cfg = tiny.tiny_config()
  cfg.stage2.enabled = False
  first = run.train_and_evaluate(cfg, str(tmp_path / 'a'))
  assert set(first) == {'stage1'}

  cfg.stage1.enabled = False
  cfg.stage2.enabled = True
  cfg.stage2.init_from = str(tmp_path / 'a' / 'stage1' / 'checkpoints')
  cfg.dlsa.update(enabled=True, flow_steps=30, classifier_steps=30,
                  num_clusters=16, eval_every=15, val_per_class=5)
  rows = run.train_and_evaluate(cfg, str(tmp_path / 'b'))
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
