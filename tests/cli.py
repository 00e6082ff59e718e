"""Running the real command, `python -m lcreg_jax.main`, from a test."""

import glob
import os
import subprocess
import sys

import jax
import orbax.checkpoint as ocp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, **env) -> subprocess.CompletedProcess:
  """The command in a fresh process, from the repository root.

  The process inherits the test session's environment: the same fake
  devices and the same compilation cache, so it reuses compiled programs.
  """
  return subprocess.run(
    [sys.executable, '-m', 'lcreg_jax.main', *args],
    cwd=ROOT,
    env=dict(os.environ, **env),
    capture_output=True,
    text=True,
    timeout=600,
  )


def final_params(stage_dir):
  """(step, params) of the newest checkpoint of a run's stage folder, on one
  device whatever mesh wrote it."""
  step = max(
    int(os.path.basename(d))
    for d in glob.glob(f'{stage_dir}/checkpoints/[0-9]*')
  )
  path = os.path.join(stage_dir, 'checkpoints', str(step), 'default')
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as checkpointer:
    meta = checkpointer.metadata(path)
    meta = getattr(meta, 'item_metadata', meta)
    target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta
    )
    state = checkpointer.restore(path, target)
  return step, state['params']
