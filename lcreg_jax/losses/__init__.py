"""Losses as pure functions (docs/method.md §3, §4, §6, §8).

`lcreg_jax.losses.<name>` is the public API; each concept has its own module.
"""

from lcreg_jax.losses.classification import balanced_softmax_loss
from lcreg_jax.losses.classification import class_mean_top1
from lcreg_jax.losses.classification import cross_entropy
from lcreg_jax.losses.classification import label_aware_smoothing
from lcreg_jax.losses.classification import las_epsilons
from lcreg_jax.losses.classification import mixup_cross_entropy
from lcreg_jax.losses.classification import mixup_loss
from lcreg_jax.losses.classification import top1
from lcreg_jax.losses.classwise_isda import classwise_isda_logits
from lcreg_jax.losses.classwise_isda import classwise_isda_sigma2
from lcreg_jax.losses.focal import focal_loss
from lcreg_jax.losses.isda import isda_augmented_logits
from lcreg_jax.losses.isda import isda_sigma2_table
from lcreg_jax.losses.ldam import ldam_loss
from lcreg_jax.losses.ldam import ldam_margins
from lcreg_jax.losses.logit_adjustment import log_prior
from lcreg_jax.losses.logit_adjustment import logit_adjusted_loss
from lcreg_jax.losses.reconstruction import reconstruction_loss
from lcreg_jax.losses.reweighting import class_weighted_mean
from lcreg_jax.losses.reweighting import drw_weights
from lcreg_jax.losses.reweighting import effective_number_weights

__all__ = [
  'balanced_softmax_loss',
  'class_mean_top1',
  'class_weighted_mean',
  'classwise_isda_logits',
  'classwise_isda_sigma2',
  'cross_entropy',
  'drw_weights',
  'effective_number_weights',
  'focal_loss',
  'isda_augmented_logits',
  'isda_sigma2_table',
  'label_aware_smoothing',
  'las_epsilons',
  'ldam_loss',
  'ldam_margins',
  'log_prior',
  'logit_adjusted_loss',
  'mixup_cross_entropy',
  'mixup_loss',
  'reconstruction_loss',
  'top1',
]
