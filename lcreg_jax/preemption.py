"""Stopping cleanly on SIGTERM, what a TPU VM preemption, SLURM or
Kubernetes sends before it kills a job.

`loop.fit` asks `reached(step)` after every step. With one process, a
SIGTERM handler (`install`, called by `main`) raises a flag and the current
step is the one to save. With several processes, JAX's preemption service
(started by `jax.distributed.initialize`, which then owns SIGTERM) makes all
processes agree on the step (`multihost_utils.reached_preemption_sync_point`),
so that every one of them saves the same step. The loop then saves a
checkpoint there and raises `Preempted`; re-running the same command resumes
from it exactly.
"""

import signal
import threading

import jax
from jax.experimental import multihost_utils

from lcreg_jax import errors

_signalled = threading.Event()


Preempted = errors.Preempted


def _on_sigterm(signum, frame):
  del signum, frame
  _signalled.set()


def install() -> None:
  """Turns SIGTERM into a request to save and stop (single-process runs; with
  several processes JAX's preemption service handles the signal)."""
  if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _on_sigterm)


def requested() -> bool:
  """A SIGTERM has arrived in this (single-process) run."""
  return _signalled.is_set()


def reached(step: int) -> bool:
  """Whether to save at `step` and stop. Every process must call this at
  every step with the same step numbers."""
  if jax.process_count() > 1:
    return multihost_utils.reached_preemption_sync_point(step)
  return _signalled.is_set()


def stopped_message(name: str, step: int, directory: str) -> str:
  if not step:
    return (f'stopped by SIGTERM (preemption) before {name} trained a step; the '
            'stages before it are saved. Run the same command again to go on.')
  return (f'stopped by SIGTERM (preemption) at step {step} of {name}: a checkpoint of '
          f'that step is in {directory}. Run the same command again to resume '
          'from it exactly.')
