"""The one report writer: report.json, plots, summary.json and the table."""

import json
import os

import ml_collections
import numpy as np

from lcreg_jax.data import dataset
from lcreg_jax.evaluate import report


def _info():
  return dataset.DatasetInfo(
    name='toy',
    num_classes=3,
    image_shape=(2, 2, 1),
    class_counts=np.array([150, 50, 10]),
    split_sizes={'train': 210, 'test': 4},
  )


EVAL = ml_collections.ConfigDict(
  dict(many_threshold=100, few_threshold=20, num_bins=15, plots=True)
)


def test_stage_report_and_summary(tmp_path, capsys):
  logits = np.log(
    np.array(
      [[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]]
    )
  )
  labels = np.array([0, 1, 2, 2])
  rows = {
    'stage1': report.write_stage_report(
      str(tmp_path / 'stage1'),
      stage='stage1',
      outputs=logits,
      labels=labels,
      info=_info(),
      eval_config=EVAL,
      latent_usage=[3, 1],
    )
  }
  rows['dlsa'] = report.write_stage_report(
    str(tmp_path / 'dlsa'),
    stage='dlsa',
    outputs=np.exp(logits),
    labels=labels,
    info=_info(),
    eval_config=EVAL,
    are_probs=True,
    extra={
      'routing': {
        0: {'share': 0.25, 'accuracy': float('nan')},
        1: {'share': 0.75, 'accuracy': 1.0},
      }
    },
  )
  on_disk = json.load(open(tmp_path / 'stage1' / 'report.json'))
  assert on_disk['top1'] == 0.75 and on_disk['latent_usage'] == [3, 1]
  assert (on_disk['many'], on_disk['few']) == (1.0, 0.5)
  assert rows['dlsa']['top1'] == 0.75
  # NaN is not JSON: it is written as null.
  dlsa = json.load(open(tmp_path / 'dlsa' / 'report.json'))
  assert dlsa['routing']['0']['accuracy'] is None
  assert sorted(os.listdir(tmp_path / 'stage1' / 'plots')) == [
    'latent_usage.png',
    'per_class_accuracy.png',
    'reliability.png',
  ]
  table = report.write_summary(str(tmp_path), rows, _info())
  out = capsys.readouterr().out
  assert 'toy, test set of 4' in out and table in out
  assert '| stage1 | 75.00 | 100.00 | 100.00 | 50.00 |' in table
  assert 'DLSA routing: stage 0: 25.0% of test, top-1 -; final: 75.0%' in table
  summary = json.load(open(tmp_path / 'summary.json'))
  assert summary['stage1']['top1'] == 0.75
  assert 'per_class_accuracy' not in summary['stage1']  # scalars only
  assert not [p for p in os.listdir(tmp_path) if p.endswith('.tmp')]
