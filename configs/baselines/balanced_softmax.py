"""Baseline: balanced softmax, CE(z + log n_c, y) (docs/method.md §8).

Command:
  python -m lcreg_jax.main --config=configs/baselines/balanced_softmax.py --workdir=workdirs/balanced_softmax
(Fashion-MNIST-LT; add :cifar10_lt etc. after the file name for another
data set).
Result to expect: no run record yet (docs/results.md).
"""

from lcreg_jax.config import baselines


def get_config(data=None):
  c = baselines.plain_ce(data)
  c.stage1.loss = 'balanced_softmax'
  return c
