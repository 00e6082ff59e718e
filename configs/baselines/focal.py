"""Baseline: focal loss (docs/method.md §8; γ = stage1.focal_gamma).

Command:
  python -m lcreg_jax.main --config=configs/baselines/focal.py --workdir=workdirs/focal
(Fashion-MNIST-LT; add :cifar10_lt etc. after the file name for another
data set).
Result to expect: no run record yet (docs/results.md).
"""

from lcreg_jax.config import baselines


def get_config(data=None):
  c = baselines.plain_ce(data)
  c.stage1.loss = 'focal'
  return c
