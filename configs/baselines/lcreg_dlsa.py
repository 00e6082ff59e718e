"""LCReg, MiSLAS's stage 2, then DLSA (docs/method.md §6)."""

import os
import runpy

_shared = runpy.run_path(os.path.join(os.path.dirname(__file__), '_shared.py'))


def get_config(data=None):
  c = _shared['data_config'](data)
  c.dlsa.enabled = True
  return c
