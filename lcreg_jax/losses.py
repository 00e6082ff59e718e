"""Loss functions of LCReg and MiSLAS (DESIGN §3, §4) as pure functions."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

HIGHEST = jax.lax.Precision.HIGHEST


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy with integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels).mean()


def mixup_cross_entropy(logits, labels, partner_labels, lam) -> jax.Array:
  """MiSLAS stage-1 loss: λ CE(ŷ, y) + (1-λ) CE(ŷ, y[perm])."""
  return (lam * cross_entropy(logits, labels)
          + (1.0 - lam) * cross_entropy(logits, partner_labels))


def reconstruction_loss(features: jax.Array, reconstruction: jax.Array,
                        normalize: bool = False,
                        temperature: float = 1.0) -> jax.Array:
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


def las_epsilons(class_counts, head: float, tail: float,
                 shape: str = 'concave', power: float | None = None):
  """Per-class smoothing ε_y from the class counts (DESIGN §4).

  ε_1 (`head`) goes to the most frequent class, ε_K (`tail`) to the rarest.
  With equal counts every class gets `head` (there is no tail to favour).
  """
  n = np.asarray(class_counts, np.float64)
  span = n.max() - n.min()
  r = (n - n.min()) / span if span > 0 else np.ones_like(n)
  if shape == 'concave':
    f = np.sin(np.pi * r / 2)
  elif shape == 'linear':
    f = r
  elif shape == 'convex':
    f = 1.0 - np.cos(np.pi * r / 2)
  elif shape == 'exp':
    if power is None:
      raise ValueError("label-aware smoothing shape 'exp' needs a power p: "
                       'set --config.stage2.las_power.')
    f = r ** power
  else:
    raise ValueError(f'Unknown label-aware smoothing shape {shape!r}; use one '
                     "of 'concave', 'linear', 'convex', 'exp'.")
  return (tail + (head - tail) * f).astype(np.float32)


def label_aware_smoothing(logits, labels, class_counts, head, tail,
                          shape: str = 'concave', power=None) -> jax.Array:
  """MiSLAS label-aware smoothing, mean over the batch.

  loss = (1-ε_y)(-log p_y) + (ε_y / C) Σ_k (-log p_k).
  """
  eps = jnp.asarray(las_epsilons(class_counts, head, tail, shape, power))
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  e = eps[labels]
  nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
  uniform = -logp.mean(-1)
  return ((1.0 - e) * nll + e * uniform).mean()
