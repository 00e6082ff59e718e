"""Logit-adjusted loss (Menon et al., 2021; docs/method.md §8)."""

import jax
import jax.numpy as jnp
import optax

from lcreg_jax.losses import reweighting


def log_prior(
  class_counts, tiny: float = 1e-12, dtype=jnp.float32
) -> jax.Array:
  """log π_c = log(n_c / N); `tiny` keeps an absent class finite (its
  adjusted logit is then very negative, as in balanced softmax)."""
  n = jnp.asarray(class_counts, dtype)
  return jnp.log(n / n.sum() + tiny)


def logit_adjusted_loss(
  logits, labels, class_counts, tau: float = 1.0, class_weights=None
) -> jax.Array:
  """Mean CE(z + τ log π_c, y); class-weighted mean when weights are given."""
  z = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  adj = z + tau * log_prior(class_counts, dtype=z.dtype)
  ce = optax.softmax_cross_entropy_with_integer_labels(adj, labels)
  return reweighting.class_weighted_mean(ce, labels, class_weights)
