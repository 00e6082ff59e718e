"""Baseline: class-wise ISDA (docs/method.md §8) on the pooled feature, plain CE
otherwise. Full per-class covariances for up to 100 classes, diagonal ones
beyond (a full C × D × D is 16 GB at C = 1000, D = 2048).

Command:
  python -m lcreg_jax.main --config=configs/baselines/isda.py --workdir=workdirs/isda
(Fashion-MNIST-LT; add :cifar10_lt etc. after the file name for another
data set).
Result to expect: no run record yet (docs/results.md).
"""

from lcreg_jax.config import baselines


def get_config(data=None):
  c = baselines.plain_ce(data)
  c.model.class_isda = 'full' if c.data.num_classes <= 100 else 'diagonal'
  return c
