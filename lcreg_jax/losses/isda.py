"""ISDA's closed-form upper bound of the augmented cross-entropy (eqs. 5–6,
DESIGN §3), for LCReg's latent categories or any classes."""

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def isda_sigma2_table(weight: jax.Array, cov: jax.Array,
                      lam: jax.Array) -> jax.Array:
  """σ²[m, j] = λ (w_j - w_m)ᵀ Σ_m (w_j - w_m), an (C, C) table.

  Args:
    weight: (D, C) classifier kernel (flax Dense layout), with gradients.
    cov: (C, D, D) full or (C, D) diagonal covariance, gradients stopped.
    lam: augmentation strength λ.
  """
  cov = jax.lax.stop_gradient(cov).astype(jnp.float32)
  w = weight.astype(jnp.float32)
  # diff[m, :, j] = w_j - w_m; forming the differences first avoids the
  # cancellation of the expanded quadratic form.
  diff = w[None, :, :] - jnp.transpose(w)[:, :, None]      # (C, D, C)
  if cov.ndim == 2:
    quad = jnp.einsum('mdj,md,mdj->mj', diff, cov, diff, precision=HIGHEST)
  else:
    quad = jnp.einsum('mdj,mde,mej->mj', diff, cov, diff, precision=HIGHEST)
  return lam * quad


def isda_augmented_logits(logits: jax.Array, weight: jax.Array,
                          cov: jax.Array, labels: jax.Array,
                          lam) -> jax.Array:
  """ISDA's closed-form upper bound: logits + σ²/2 for each sample's class.

  Cross-entropy of these logits bounds the expected cross-entropy over
  semantic perturbations ε ~ N(0, λ Σ_y) of the feature (eqs. 5–6).
  """
  table = isda_sigma2_table(weight, cov, lam)
  return logits.astype(jnp.float32) + 0.5 * table[labels]
