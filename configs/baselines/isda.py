"""Baseline: class-wise ISDA (DESIGN §8) on the pooled feature, plain CE
otherwise."""

import os
import runpy

_shared = runpy.run_path(os.path.join(os.path.dirname(__file__), '_shared.py'))


def get_config(data=None):
  c = _shared['plain_ce'](data)
  c.stage1.isda = 'classwise'
  return c
