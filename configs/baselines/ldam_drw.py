"""Baseline: LDAM loss with deferred re-weighting (effective-number
weights from stage1.drw_epoch on; docs/method.md §8).

Command:
  python -m lcreg_jax.main --config=configs/baselines/ldam_drw.py --workdir=workdirs/ldam_drw
(Fashion-MNIST-LT; add :cifar10_lt etc. after the file name for another
data set).
Result to expect: no run record yet (docs/results.md).
"""

from lcreg_jax.config import baselines


def get_config(data=None):
  c = baselines.plain_ce(data)
  c.stage1.loss = 'ldam'
  c.stage1.reweight = 'drw'
  # LDAM-DRW's own classifier: the normalised (cosine) one, with s = 30
  # (on a plain linear head s = 30 multiplies unbounded logits and the
  # loss diverges).
  c.model.head = 'normed'
  c.model.normed_scale = c.stage1.ldam_scale
  # LDAM-DRW defers the weights to epoch 160 of 200: the same share of any
  # data set's schedule (a shorter --config.stage1.epochs needs its own
  # --config.stage1.drw_epoch).
  c.stage1.drw_epoch = 0.8 * c.stage1.epochs
  return c
