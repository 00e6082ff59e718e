"""Class re-weighting (docs/method.md §8): effective-number weights (Cui et al.),
their deferred form DRW (Cao et al.) and PyTorch's class-weighted mean."""

import jax
import jax.numpy as jnp
import numpy as np


def effective_number_weights(class_counts, beta: float = 0.9999) -> np.ndarray:
  """w_c = (1 - β) / (1 - β^{n_c}), normalised so that Σ_c w_c = C.

  A count below 1 is taken as 1: such a class never appears as a label in
  training, so its weight only enters the normalisation, and n_c = 0 would
  make it infinite. β = 0 gives weights 1 (LDAM-DRW's "no re-weighting").
  """
  n = np.maximum(np.asarray(class_counts, np.float64), 1.0)
  w = (1.0 - beta) / (1.0 - np.power(beta, n))
  return (w * len(n) / w.sum()).astype(np.float32)


def drw_weights(step, switch_step: int, weights) -> jax.Array:
  """Deferred re-weighting: 1 for every class before `switch_step`, then
  `weights`. A function of the step inside the jitted step, so a run resumed
  on either side of the switch weights each step as an unbroken run does."""
  weights = jnp.asarray(weights, jnp.float32)
  return jnp.where(step >= switch_step, weights, jnp.ones_like(weights))


def class_weighted_mean(
  per_sample: jax.Array, labels: jax.Array, class_weights=None
) -> jax.Array:
  """Σ_i w_{y_i} ℓ_i / Σ_i w_{y_i} (PyTorch's `weight=` convention); the
  plain mean without weights."""
  if class_weights is None:
    return per_sample.mean()
  w = jnp.asarray(class_weights, per_sample.dtype)[labels]
  return (w * per_sample).sum() / w.sum()
