"""LCReg with MiSLAS's stage 2: the data set's config as it is (with the
baselines' validation split).

Command:
  python -m lcreg_jax.main --config=configs/baselines/lcreg.py --workdir=workdirs/lcreg
(Fashion-MNIST-LT; add :cifar10_lt etc. after the file name for another
data set).
Result to expect: no run record yet (docs/results.md).
"""

from lcreg_jax.config import baselines


def get_config(data=None):
  return baselines.data_config(data)
