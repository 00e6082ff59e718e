"""LCReg with MiSLAS's stage 2: the data set's config as it is (with the
baselines' validation split)."""

import os
import runpy

_shared = runpy.run_path(os.path.join(os.path.dirname(__file__), '_shared.py'))


def get_config(data=None):
  return _shared['data_config'](data)
