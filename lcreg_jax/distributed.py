"""Joining the other processes of a multi-host run (`--distributed`).

On a Cloud TPU pod slice, under SLURM and on other clusters JAX finds the
coordinator, the process count and this process's id by itself. Elsewhere
(several GPU machines, or several processes on one machine) they come from
the environment variables that `launch/multi_gpu.sh` documents.
"""

import os

import jax

from lcreg_jax import errors

ENV = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')


def _int_var(name: str, value: str) -> int:
  try:
    return int(value)
  except ValueError:
    raise errors.ConfigError(
      f'{name}={value!r} is not an integer; set it to '
      'a whole number (the process count, or this '
      "process's id from 0)."
    ) from None


def initialize(environ=None) -> None:
  """jax.distributed.initialize with the environment's settings, if any."""
  environ = os.environ if environ is None else environ
  given = {name: environ[name] for name in ENV if environ.get(name)}
  if not given:
    jax.distributed.initialize()  # TPU pod slice, SLURM, ... find themselves
    return
  missing = [name for name in ENV if name not in given]
  if missing:
    raise errors.ConfigError(
      f'{", ".join(sorted(given))} set but not {", ".join(missing)}: set '
      'all three of JAX_COORDINATOR_ADDRESS (host:port of process 0), '
      'JAX_NUM_PROCESSES and JAX_PROCESS_ID on every process, or none of '
      'them where JAX finds its peers itself (TPU pod slices, SLURM).'
    )
  count = _int_var('JAX_NUM_PROCESSES', given['JAX_NUM_PROCESSES'])
  index = _int_var('JAX_PROCESS_ID', given['JAX_PROCESS_ID'])
  if count < 1 or not 0 <= index < count:
    raise errors.ConfigError(
      f'JAX_PROCESS_ID={index} with JAX_NUM_PROCESSES={count}: the id must '
      'lie in [0, JAX_NUM_PROCESSES), one distinct id per process.'
    )
  jax.distributed.initialize(
    coordinator_address=given['JAX_COORDINATOR_ADDRESS'],
    num_processes=count,
    process_id=index,
  )
