"""Device mesh and shardings: the one place that knows how data is laid out.

Everything runs under `jax.jit` over a 1-D ('data',) mesh: batches are split
over it, the train state is replicated, except (with `shard_covariance`) the
latent categories' moments, split along M (docs/method.md §9). BatchNorm means and the
covariance estimator's batch moments are reductions over the batch axis, so
XLA makes them global across devices and hosts.

`state_sharding` is the one description of the train state's layout: `place`
puts a fresh state there, `jit_step` compiles the step for it (in and out, so
the donated buffers are reused in place), and a checkpoint restores into the
layout of the placed template (orbax reads each array's sharding from it).
"""

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np


def make_mesh(num_devices: int | None = None, devices=None) -> Mesh:
  """A ('data',) mesh over the first `num_devices` devices (None = all).

  `devices`: the visible devices by default; `lcreg_jax.aot` passes the
  compile-only devices of a TPU slice or GPU node. The count is checked
  against them by `config.resolve_and_validate`.
  """
  devices = list(devices or jax.devices())
  return Mesh(np.asarray(devices[: num_devices or len(devices)]), ('data',))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, replicated(mesh))


def covariance_sharding(mesh: Mesh) -> NamedSharding:
  """The latent moments' layout when sharded: rows m split over 'data'.

  Mean (M, D), covariance (M, D, D) or (M, D) and count (M,) are all split
  the same way, so that the update (`covariance.update_covariance_grouped`),
  the σ² table and the explicit noise work on each device's rows alone; the
  mean and count are small, but splitting them too keeps the merge local.
  """
  return NamedSharding(mesh, P('data'))


def state_sharding(state, mesh: Mesh, shard_covariance: bool = False):
  """The NamedSharding of every leaf of a train state (arrays or shapes).

  Everything is replicated; with `shard_covariance`, the leaves of
  `state.cov` (a `covariance.CovarianceState`) are split along their leading
  M axis. JAX needs even shards: M must be divisible by the mesh size
  (`config.resolve_and_validate` replicates, or stops, where it is not).
  """
  rep = replicated(mesh)
  shardings = jax.tree.map(lambda _: rep, state)
  cov = getattr(state, 'cov', None)
  if not shard_covariance or not jax.tree.leaves(cov):
    return shardings
  n = mesh.size
  m = jax.tree.leaves(cov)[0].shape[0]
  if m % n:
    raise ValueError(
      f'The latent moments have M = {m} rows, which do not split evenly '
      f'over {n} devices; use a multiple of {n} latents or replicate them '
      '(shard_covariance=False).'
    )
  return shardings.replace(
    cov=jax.tree.map(lambda _: covariance_sharding(mesh), cov)
  )


def place(state, mesh: Mesh, shard_covariance: bool = False):
  """Puts a train state on the mesh in the layout of `state_sharding`."""
  return jax.device_put(state, state_sharding(state, mesh, shard_covariance))


def jit_step(step_fn, mesh: Mesh, state, shard_covariance: bool = False):
  """jit of `step_fn(state, batch)` over the mesh: the state in the layout of
  `state_sharding` (in and out) and donated, the batch sharded, the metrics
  replicated."""
  shardings = state_sharding(state, mesh, shard_covariance)
  return jax.jit(
    step_fn,
    in_shardings=(shardings, batch_sharding(mesh)),
    out_shardings=(shardings, replicated(mesh)),
    donate_argnums=(0,),
  )


def to_host(tree):
  """Fetches (possibly multi-host sharded) arrays as full NumPy arrays."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree.map(np.asarray, tree)
