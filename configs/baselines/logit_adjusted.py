"""Baseline: logit-adjusted loss, CE(z + τ log π_c, y), τ = 1 (docs/method.md §8).

Command:
  python -m lcreg_jax.main --config=configs/baselines/logit_adjusted.py --workdir=workdirs/logit_adjusted
(Fashion-MNIST-LT; add :cifar10_lt etc. after the file name for another
data set).
Result to expect: no run record yet (docs/results.md).
"""

from lcreg_jax.config import baselines


def get_config(data=None):
  c = baselines.plain_ce(data)
  c.stage1.loss = 'logit_adjusted'
  return c
