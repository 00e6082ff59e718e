"""Losses as pure functions (DESIGN §3, §4, §6, §8).

`lcreg_jax.losses.<name>` is the public API; each concept has its own module.
"""

from lcreg_jax.losses.classification import balanced_softmax_loss
from lcreg_jax.losses.classification import cross_entropy
from lcreg_jax.losses.classification import label_aware_smoothing
from lcreg_jax.losses.classification import las_epsilons
from lcreg_jax.losses.classification import mixup_cross_entropy
from lcreg_jax.losses.isda import isda_augmented_logits
from lcreg_jax.losses.isda import isda_sigma2_table
from lcreg_jax.losses.reconstruction import reconstruction_loss

__all__ = [
    'balanced_softmax_loss', 'cross_entropy', 'isda_augmented_logits',
    'isda_sigma2_table', 'label_aware_smoothing', 'las_epsilons',
    'mixup_cross_entropy', 'reconstruction_loss',
]
