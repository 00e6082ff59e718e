"""Baseline: balanced softmax, CE(z + log n_c, y) (docs/method.md §8).

Command:
  python -m lcreg_jax.main --config=configs/baselines/balanced_softmax.py --workdir=workdirs/balanced_softmax
(Fashion-MNIST-LT; add :cifar10_lt etc. after the file name for another
data set).
Result to expect: no run record yet (docs/results.md).
"""

import os
import runpy

_shared = runpy.run_path(os.path.join(os.path.dirname(__file__), '_shared.py'))


def get_config(data=None):
  c = _shared['plain_ce'](data)
  c.stage1.loss = 'balanced_softmax'
  return c
