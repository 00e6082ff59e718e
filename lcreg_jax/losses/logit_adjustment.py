"""Logit-adjusted loss (Menon et al., 2021; DESIGN §8)."""

import jax
import jax.numpy as jnp
import optax

from lcreg_jax.losses import reweighting


def log_prior(class_counts, tiny: float = 1e-12) -> jax.Array:
  """log π_c = log(n_c / N); `tiny` keeps an absent class finite (its
  adjusted logit is then very negative, as in balanced softmax)."""
  n = jnp.asarray(class_counts, jnp.float32)
  return jnp.log(n / n.sum() + tiny)


def logit_adjusted_loss(logits, labels, class_counts, tau: float = 1.0,
                        class_weights=None) -> jax.Array:
  """Mean CE(z + τ log π_c, y); class-weighted mean when weights are given."""
  adj = logits.astype(jnp.float32) + tau * log_prior(class_counts)
  ce = optax.softmax_cross_entropy_with_integer_labels(adj, labels)
  return reweighting.class_weighted_mean(ce, labels, class_weights)
