"""Class-wise ISDA (Wang et al.; docs/method.md §8): ISDA's bound over the C classes
on the pooled feature, each sample's σ² row computed from W and Σ_{y_i}.

The latent version (`losses.isda`) builds an (M, M) table; over C classes of
a large data set that table costs C·D·C work per step, and a per-class full
covariance C·D² memory (16 GB at C = 1000, D = 2048). Here only the B rows
the batch needs are formed, and a diagonal Σ_y keeps every intermediate at
(B, C) or (D, C).
"""

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def classwise_isda_sigma2(
  weight: jax.Array, cov: jax.Array, labels: jax.Array, lam
) -> jax.Array:
  """σ²[i, j] = λ (w_j - w_{y_i})ᵀ Σ_{y_i} (w_j - w_{y_i}), a (B, C) array.

  Args:
    weight: (D, C) classifier kernel (flax Dense layout), with gradients.
    cov: (C, D) diagonal or (C, D, D) full class covariances, gradients
      stopped. Full forms a (B, D, C) difference and gathers (B, D, D): for
      small C and D only.
    labels: (B,) integer classes.
    lam: augmentation strength λ.
  """
  cov = jax.lax.stop_gradient(cov).astype(jnp.float32)
  w = weight.astype(jnp.float32)
  w_y = jnp.transpose(w)[labels]  # (B, D)
  cov_y = cov[labels]  # (B, D) / (B, D, D)
  if cov.ndim == 2:
    # Σ_d s_d (W_dj - W_dy)², expanded so that nothing is (B, D, C):
    # s·W² - 2 (s ⊙ w_y)·W + s·w_y².
    quad = (
      jnp.dot(cov_y, w * w, precision=HIGHEST)
      - 2.0 * jnp.dot(cov_y * w_y, w, precision=HIGHEST)
      + jnp.sum(cov_y * w_y * w_y, -1, keepdims=True)
    )
    # The expansion cancels to rounding error at j = y and may dip below 0
    # where the true form is tiny; both are exactly 0 / >= 0 in exact math.
    own = jax.nn.one_hot(labels, w.shape[1], dtype=bool)
    quad = jnp.where(own, 0.0, jnp.maximum(quad, 0.0))
  else:
    diff = w[None] - w_y[:, :, None]  # (B, D, C)
    quad = jnp.einsum('bdj,bde,bej->bj', diff, cov_y, diff, precision=HIGHEST)
  return lam * quad


def classwise_isda_logits(
  logits: jax.Array, weight: jax.Array, cov: jax.Array, labels: jax.Array, lam
) -> jax.Array:
  """z + σ²/2: cross-entropy of these logits is ISDA's upper bound of the
  expected CE over feature perturbations ε ~ N(0, λ Σ_y)."""
  return logits.astype(jnp.float32) + 0.5 * classwise_isda_sigma2(
    weight, cov, labels, lam
  )
