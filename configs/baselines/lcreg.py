"""LCReg with MiSLAS's stage 2: the data set's config as it is (with the
baselines' validation split).

Command:
  python -m lcreg_jax.main --config=configs/baselines/lcreg.py --workdir=workdirs/lcreg
(Fashion-MNIST-LT; add :cifar10_lt etc. after the file name for another
data set).
Result to expect: no run record yet (docs/results.md).
"""

import os
import runpy

_shared = runpy.run_path(os.path.join(os.path.dirname(__file__), '_shared.py'))


def get_config(data=None):
  return _shared['data_config'](data)
