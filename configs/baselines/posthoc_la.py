"""Baseline: post-hoc logit adjustment of the plain CE model, τ chosen on
validation (docs/method.md §8)."""

import os
import runpy

_shared = runpy.run_path(os.path.join(os.path.dirname(__file__), '_shared.py'))


def get_config(data=None):
  return _shared['decoupled']('posthoc_la', data)
