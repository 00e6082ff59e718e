"""Baseline: plain cross-entropy, instance-balanced sampling, no mixup.

Command:
  python -m lcreg_jax.main --config=configs/baselines/ce.py --workdir=workdirs/ce
(Fashion-MNIST-LT; add :cifar10_lt etc. after the file name for another
data set).
Result to expect: no run record yet (docs/results.md).
"""

from lcreg_jax.config import baselines


def get_config(data=None):
  return baselines.plain_ce(data)
