"""Label-distribution-aware margin loss (Cao et al., 2019; docs/method.md §8)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lcreg_jax.losses import reweighting


def ldam_margins(class_counts, max_margin: float = 0.5) -> np.ndarray:
  """m_c ∝ n_c^{-1/4}, scaled so that the rarest class gets `max_margin`.
  Counts below 1 are taken as 1 (an absent class is never a label)."""
  n = np.maximum(np.asarray(class_counts, np.float64), 1.0)
  m = n**-0.25
  return (m * max_margin / m.max()).astype(np.float32)


def ldam_loss(
  logits,
  labels,
  class_counts,
  max_margin: float = 0.5,
  scale: float = 30.0,
  class_weights=None,
) -> jax.Array:
  """CE(s · z', y) with z'_y = z_y - m_y (other logits unchanged), the
  class-weighted mean Σ w_{y_i} ℓ_i / Σ w_{y_i} when weights are given."""
  z = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  margins = jnp.asarray(ldam_margins(class_counts, max_margin), z.dtype)
  onehot = jax.nn.one_hot(labels, z.shape[-1], dtype=z.dtype)
  z = z - onehot * margins[labels][:, None]
  ce = optax.softmax_cross_entropy_with_integer_labels(scale * z, labels)
  return reweighting.class_weighted_mean(ce, labels, class_weights)
