"""Stopping cleanly on SIGTERM, what a TPU VM preemption, SLURM or
Kubernetes sends before it kills a job.

Training stops only at *agreed points*: after every step of every loop
(stage 1, stage 2, each DLSA flow and classifier), before a loop's first
step, and between stages. At each one the run asks `reached()`.

- One process: a SIGTERM handler (`install`, called by `main`) raises a
  flag, and the next agreed point is where the run saves and stops.
- Several processes: JAX's preemption service (started by
  `jax.distributed.initialize`, which then owns SIGTERM) makes them agree
  (`multihost_utils.reached_preemption_sync_point`). On a notice it sets the
  sync point to one past the highest number any process has reported, and
  stops a process only on an exact match. So the number each process
  reports is a counter of agreed points that grows over the whole run, not
  a loop's step (which starts again at 0 in every loop: a notice during
  stage 1's last evaluation would otherwise name a step that the shorter
  stage 2 never reaches, and the signal would be lost). Every process
  passes the same agreed points in the same order, so they all stop at the
  same one.

The loop saves a checkpoint where it stops and raises `Preempted`; between
loops everything before is already saved. Re-running the same command
resumes from there exactly.
"""

import itertools
import signal
import threading

import jax
from jax.experimental import multihost_utils

from lcreg_jax import errors

_signalled = threading.Event()
# Agreed points passed so far in this process (the multi-process sync count).
_agreed_points = itertools.count(1)

Preempted = errors.Preempted


def _on_sigterm(signum, frame):
  del signum, frame
  _signalled.set()


def install() -> None:
  """Turns SIGTERM into a request to save and stop (single-process runs; with
  several processes JAX's preemption service handles the signal)."""
  if (
    jax.process_count() == 1
    and threading.current_thread() is threading.main_thread()
  ):
    signal.signal(signal.SIGTERM, _on_sigterm)


def reached() -> bool:
  """Whether to save and stop at this agreed point.

  Every process must call it at the same points, in the same order (after
  each loop step, at each loop's start, between stages).
  """
  if jax.process_count() > 1:
    return multihost_utils.reached_preemption_sync_point(next(_agreed_points))
  return _signalled.is_set()


def stop_between(next_part: str, workdir) -> None:
  """An agreed point between two parts of a run: raises `Preempted` if the
  run is to stop here (everything before it is saved)."""
  if reached():
    raise Preempted(stopped_message(next_part, 0, workdir))


def stopped_message(name: str, step: int, directory) -> str:
  if not step:
    return (
      f'stopped by SIGTERM (preemption) before {name} trained a step; '
      f'the parts before it are saved in {directory}. Run the same '
      'command again to go on from there.'
    )
  return (
    f'stopped by SIGTERM (preemption) at step {step} of {name}: a '
    f'checkpoint of that step is in {directory}. Run the same command '
    'again to resume from it exactly.'
  )
