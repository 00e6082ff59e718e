"""Device mesh and shardings: the one place that knows how data is laid out.

Everything runs under `jax.jit` over a 1-D ('data',) mesh: batches are split
over it, the train state is replicated. BatchNorm means and the covariance
estimator's batch moments are plain reductions over the batch axis, so XLA
makes them global across devices and hosts.
"""

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A ('data',) mesh over the first `num_devices` devices (None = all).

  The count is checked against the visible devices by
  `config.resolve_and_validate`.
  """
  devices = jax.devices()
  return Mesh(np.asarray(devices[:num_devices or len(devices)]), ('data',))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, replicated(mesh))


def jit_step(step_fn, mesh: Mesh, state):
  """jit of `step_fn(state, batch)` over the mesh: the state replicated and
  donated, the batch sharded, the metrics replicated."""
  rep = replicated(mesh)
  state_sharding = jax.tree.map(lambda _: rep, state)
  return jax.jit(step_fn,
                 in_shardings=(state_sharding, batch_sharding(mesh)),
                 out_shardings=(state_sharding, rep), donate_argnums=(0,))


def to_host(tree):
  """Fetches (possibly multi-host sharded) arrays as full NumPy arrays."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree.map(np.asarray, tree)
