"""LCReg, MiSLAS's stage 2, then DLSA (docs/method.md §6).

Command:
  python -m lcreg_jax.main --config=configs/baselines/lcreg_dlsa.py --workdir=workdirs/lcreg_dlsa
(Fashion-MNIST-LT; add :cifar10_lt etc. after the file name for another
data set).
Result to expect: no run record yet (docs/results.md).
"""

from lcreg_jax.config import baselines


def get_config(data=None):
  c = baselines.data_config(data)
  c.dlsa.enabled = True
  return c
