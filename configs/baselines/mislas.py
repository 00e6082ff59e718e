"""Baseline: MiSLAS (mixup stage 1, docs/method.md §4 stage 2), no latent module.

Command:
  python -m lcreg_jax.main --config=configs/baselines/mislas.py --workdir=workdirs/mislas
(Fashion-MNIST-LT; add :cifar10_lt etc. after the file name for another
data set).
Result to expect: no run record yet (docs/results.md).
"""

from lcreg_jax.config import baselines


def get_config(data=None):
  c = baselines.data_config(data)
  c.model.latent.enabled = False
  c.model.classify_on = 'feature'
  return c
