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

from lcreg_jax import errors


def make_mesh(num_devices: int = 0) -> Mesh:
  """A ('data',) mesh over the first `num_devices` devices (0 = all)."""
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise errors.ConfigError(
          f'config.num_devices={num_devices} but only {len(devices)} devices '
          'are visible; lower it or set 0 to use all devices.')
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), ('data',))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, what: str):
  n = mesh.devices.size
  if batch_size % n:
    raise errors.ConfigError(
        f'{what}={batch_size} is not divisible by the {n} devices of the '
        f'mesh; choose a multiple of {n} (e.g. {max(n, batch_size // n * n)}).')


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, replicated(mesh))


def to_host(tree):
  """Fetches (possibly multi-host sharded) arrays as full NumPy arrays."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree.map(np.asarray, tree)
