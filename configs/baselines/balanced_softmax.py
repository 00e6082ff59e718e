"""Baseline: balanced softmax, CE(z + log n_c, y) (docs/method.md §8)."""

import os
import runpy

_shared = runpy.run_path(os.path.join(os.path.dirname(__file__), '_shared.py'))


def get_config(data=None):
  c = _shared['plain_ce'](data)
  c.stage1.loss = 'balanced_softmax'
  return c
