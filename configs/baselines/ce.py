"""Baseline: plain cross-entropy, instance-balanced sampling, no mixup."""

import os
import runpy

_shared = runpy.run_path(os.path.join(os.path.dirname(__file__), '_shared.py'))


def get_config(data=None):
  return _shared['plain_ce'](data)
