"""Online per-class feature moments, as in ISDA (docs/method.md §3).

The same update is vmapped over classes; for LCReg the "classes" are the M
latent categories. The state holds, per class c, the running mean, the
(biased) covariance and the number of samples seen so far, and is merged with
the moments of each new batch by ISDA's exact pooled formula, so that after any
stream of batches it equals the moments of the concatenated stream.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P


class CovarianceState(NamedTuple):
  mean: jax.Array  # (C, D)
  cov: jax.Array  # (C, D, D), or (C, D) when diagonal
  count: jax.Array  # (C,) float32: float so that huge streams do not overflow


def init_covariance(
  num_classes: int, dim: int, diagonal: bool = False
) -> CovarianceState:
  cov_shape = (num_classes, dim) if diagonal else (num_classes, dim, dim)
  return CovarianceState(
    mean=jnp.zeros((num_classes, dim), jnp.float32),
    cov=jnp.zeros(cov_shape, jnp.float32),
    count=jnp.zeros((num_classes,), jnp.float32),
  )


def batch_moments(
  features: jax.Array,
  labels: jax.Array,
  num_classes: int,
  diagonal: bool = False,
):
  """Per-class count, mean and biased covariance of one batch.

  Computed with one-hot sums rather than a gather per class so that the work
  is one dense matmul and, under data parallelism, the sums over a sharded
  batch axis are global (XLA inserts the all-reduce).
  """
  features = features.astype(jnp.float32)
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)  # (N, C)
  count = onehot.sum(0)  # (C,)
  safe = jnp.maximum(count, 1.0)[:, None]
  mean = onehot.T @ features / safe  # (C, D)
  centred = features[:, None, :] - mean[None]  # (N, C, D)
  centred = centred * onehot[:, :, None]
  if diagonal:
    cov = jnp.einsum('ncd,ncd->cd', centred, centred) / safe
  else:
    cov = jnp.einsum('ncd,nce->cde', centred, centred) / safe[:, :, None]
  return count, mean, cov


def _merge_one(mean, cov, count, b_mean, b_cov, b_count):
  total = count + b_count
  w = jnp.where(total > 0, b_count / jnp.maximum(total, 1.0), 0.0)
  diff = mean - b_mean
  if cov.ndim == 1:
    cross = diff * diff
  else:
    cross = jnp.outer(diff, diff)
  new_cov = (1 - w) * cov + w * b_cov + w * (1 - w) * cross
  new_mean = (1 - w) * mean + w * b_mean
  return new_mean, new_cov, total


def _merge(state: CovarianceState, b_count, b_mean, b_cov) -> CovarianceState:
  mean, cov, count = jax.vmap(_merge_one)(
    state.mean, state.cov, state.count, b_mean, b_cov, b_count
  )
  return CovarianceState(mean=mean, cov=cov, count=count)


def update_covariance(
  state: CovarianceState, features: jax.Array, labels: jax.Array
) -> CovarianceState:
  """Merges a batch of (features (N, D), labels (N,)) into the moments.

  Gradients are stopped: the estimator is a statistic of the features, not a
  path for the loss to push them along.
  """
  num_classes = state.mean.shape[0]
  diagonal = state.cov.ndim == 2
  features = jax.lax.stop_gradient(features)
  return _merge(state, *batch_moments(features, labels, num_classes, diagonal))


def _grouped_update(
  state: CovarianceState, features: jax.Array
) -> CovarianceState:
  n = features.shape[0]
  b_mean = features.mean(0)
  centred = features - b_mean[None]
  if state.cov.ndim == 2:
    b_cov = jnp.einsum('bcd,bcd->cd', centred, centred) / n
  else:
    b_cov = jnp.einsum('bcd,bce->cde', centred, centred) / n
  b_count = jnp.full(state.count.shape, n, jnp.float32)
  return _merge(state, b_count, b_mean, b_cov)


def update_covariance_grouped(
  state: CovarianceState, features: jax.Array, mesh: Mesh | None = None
) -> CovarianceState:
  """Same update for a class-balanced batch laid out as (B, C, D).

  LCReg's latent samples come exactly B per latent category; using that
  layout avoids the (B·C, C, D) one-hot expansion of the general path.

  With `mesh`, the state is split along C over the mesh's 'data' axis
  (`parallel.state_sharding`): the batch is re-split from rows of images to
  columns of classes (an all-to-all of B × C × D), and each device merges
  the moments of its own classes over the whole batch. No C × D × D array
  crosses devices, and none is formed whole on one.
  """
  features = jax.lax.stop_gradient(features).astype(jnp.float32)
  if mesh is None:
    return _grouped_update(state, features)
  return jax.shard_map(
    _grouped_update,
    mesh=mesh,
    in_specs=(P('data'), P(None, 'data')),
    out_specs=P('data'),
  )(state, features)
