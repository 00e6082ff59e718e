"""Baseline: logit-adjusted loss, CE(z + τ log π_c, y), τ = 1 (docs/method.md §8)."""

import os
import runpy

_shared = runpy.run_path(os.path.join(os.path.dirname(__file__), '_shared.py'))


def get_config(data=None):
  c = _shared['plain_ce'](data)
  c.stage1.loss = 'logit_adjusted'
  return c
