"""LCReg's reconstruction loss (eq. 4, docs/method.md §3)."""

import jax
import jax.numpy as jnp


def reconstruction_loss(
  features: jax.Array,
  reconstruction: jax.Array,
  normalize: bool = False,
  temperature: float = 1.0,
) -> jax.Array:
  """Eq. 4: each reconstructed position must point back to its own position.

  Args:
    features: (B, P, D) backbone map F, P = H·W positions.
    reconstruction: (B, P, D) F̂.
    normalize: L2-normalise rows of both before the correlation (then the
      temperature sets the sharpness; without it, dot products of raw
      features can saturate the softmax).
    temperature: divides the correlation.
  Returns:
    mean over images and positions of -log softmax_q(F̂ Fᵀ)[p, p].
  """
  f = features.astype(jnp.float32)
  r = reconstruction.astype(jnp.float32)
  if normalize:
    f = f / (jnp.linalg.norm(f, axis=-1, keepdims=True) + 1e-6)
    r = r / (jnp.linalg.norm(r, axis=-1, keepdims=True) + 1e-6)
  cor = jnp.einsum('bpd,bqd->bpq', r, f) / temperature
  logp = jax.nn.log_softmax(cor, axis=-1)
  return -jnp.diagonal(logp, axis1=1, axis2=2).mean()
