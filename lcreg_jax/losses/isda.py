"""ISDA's closed-form upper bound of the augmented cross-entropy (eqs. 5–6,
docs/method.md §3), for LCReg's latent categories or any classes."""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

HIGHEST = jax.lax.Precision.HIGHEST

# The most bytes of (w_j - w_m) differences, (rows, D, C), formed at once.
BLOCK_BYTES = 64 * 2**20


def _sigma2_rows(weight, w_rows, cov_rows, block_rows: int):
  """quad[r, j] = (w_j - w_r)ᵀ Σ_r (w_j - w_r) for the given rows r.

  In blocks of `block_rows` rows, so that a class-wise table never forms the
  (C, D, C) differences of all rows at once. The blocks are sliced from the
  covariance inside the loop (it is not copied or restacked) and recomputed
  in the backward pass (their differences are not kept either); the last
  block overlaps the one before it instead of being padded.
  """

  def block(w_b, cov_b):  # (k, D), (k, D, D) or (k, D)
    # Forming the differences first avoids the cancellation of the expanded
    # quadratic form.
    diff = weight[None] - w_b[:, :, None]  # (k, D, C)
    if cov_b.ndim == 2:
      return jnp.einsum('mdj,md,mdj->mj', diff, cov_b, diff, precision=HIGHEST)
    return jnp.einsum('mdj,mde,mej->mj', diff, cov_b, diff, precision=HIGHEST)

  rows, k = w_rows.shape[0], block_rows
  if k >= rows:
    return block(w_rows, cov_rows)
  n = -(-rows // k)

  @jax.checkpoint
  def step(start):
    return block(
      jax.lax.dynamic_slice_in_dim(w_rows, start, k),
      jax.lax.dynamic_slice_in_dim(cov_rows, start, k),
    )

  starts = jnp.minimum(jnp.arange(n) * k, rows - k)
  _, blocks = jax.lax.scan(lambda _, s: (None, step(s)), None, starts)
  head = blocks[:-1].reshape((n - 1) * k, -1)
  return jnp.concatenate([head, blocks[-1][(n - 1) * k - (rows - k) :]])


def isda_sigma2_table(
  weight: jax.Array,
  cov: jax.Array,
  lam: jax.Array,
  *,
  mesh: Mesh | None = None,
  block_bytes: int = BLOCK_BYTES,
) -> jax.Array:
  """σ²[m, j] = λ (w_j - w_m)ᵀ Σ_m (w_j - w_m), an (C, C) table.

  Args:
    weight: (D, C) classifier kernel (flax Dense layout), with gradients.
    cov: (C, D, D) full or (C, D) diagonal covariance, gradients stopped.
    lam: augmentation strength λ.
    mesh: when `cov` is split along C over the mesh's 'data' axis
      (`parallel.state_sharding`), each device computes the rows of its own
      classes; only the (C, C) table, split by rows, leaves the devices.
    block_bytes: at most this many bytes of (rows, D, C) differences are
      formed at once (per device).
  """
  cov = jax.lax.stop_gradient(cov).astype(jnp.float32)
  w = weight.astype(jnp.float32)
  d, c = w.shape
  rows = functools.partial(
    _sigma2_rows, block_rows=max(1, block_bytes // (4 * d * c))
  )
  if mesh is None:
    quad = rows(w, jnp.transpose(w), cov)
  else:
    quad = jax.shard_map(
      rows, mesh=mesh, in_specs=(P(), P('data'), P('data')), out_specs=P('data')
    )(w, jnp.transpose(w), cov)
  return lam * quad


def isda_augmented_logits(
  logits: jax.Array,
  weight: jax.Array,
  cov: jax.Array,
  labels: jax.Array,
  lam,
  *,
  mesh: Mesh | None = None,
) -> jax.Array:
  """ISDA's closed-form upper bound: logits + σ²/2 for each sample's class.

  Cross-entropy of these logits bounds the expected cross-entropy over
  semantic perturbations ε ~ N(0, λ Σ_y) of the feature (eqs. 5–6). `mesh`:
  as for `isda_sigma2_table`.
  """
  table = isda_sigma2_table(weight, cov, lam, mesh=mesh)
  return logits.astype(jnp.float32) + 0.5 * table[labels]
