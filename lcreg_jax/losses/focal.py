"""Focal loss in LDAM-DRW's form (docs/method.md §8)."""

import jax
import jax.numpy as jnp
import optax


def focal_loss(logits, labels, gamma: float, class_weights=None) -> jax.Array:
  """mean_i (1 - exp(-ℓ_i))^γ ℓ_i with ℓ_i = w_{y_i} CE_i.

  As in LDAM-DRW, the class weights scale each sample's cross-entropy before
  the focal factor and the result is a plain mean over the batch (not the
  weighted mean of the other losses). γ = 0 without weights is the mean CE.
  """
  # At least float32 (bfloat16 logits), float64 kept (finite differences).
  z = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  ce = optax.softmax_cross_entropy_with_integer_labels(z, labels)
  if class_weights is not None:
    ce = jnp.asarray(class_weights, z.dtype)[labels] * ce
  if gamma == 0:  # 0^0 = 1 in the limit; avoids a 0 * log 0 gradient at ℓ = 0
    return ce.mean()
  return ((-jnp.expm1(-ce)) ** gamma * ce).mean()
