"""Per-stage orbax checkpoints that resume, refuse another model's, and
survive a damaged one.

Each checkpoint directory holds `fingerprint.json` (what the checkpoints were
made for: model config, class count, stage) next to orbax's step folders. A
run whose fingerprint differs stops before touching the directory, so a wrong
`--workdir` can never overwrite someone's good checkpoints.

A step whose files are damaged (truncated, unreadable metadata) is moved
aside to `<directory>.corrupt/<step>` with a warning, and the previous step is
used; nothing is deleted. Orbax writes each step to a temporary folder and
renames it when complete, so a save cut short never looks like a step.
"""

import functools
import hashlib
import itertools
import json
import time

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from lcreg_jax import errors
from lcreg_jax import files


def _shapes(tree) -> list[tuple]:
  """The sorted (shape, dtype) of every array leaf: a structure signature
  that does not depend on how orbax names the tree's nodes."""
  leaves = jax.tree.leaves(tree)
  return sorted(
    (tuple(x.shape), str(x.dtype)) for x in leaves if hasattr(x, 'shape')
  )


@functools.cache
def _one_replica_writes_on_cpu():
  """On CPU, a replicated array is saved from one replica, as orbax already
  does on GPU. Its CPU/TPU default slices the array into one piece per
  replica, each written from its own device: the devices of a CPU host
  share one memory, so that only adds a slicing program per array shape
  (56 compiles and ~0.5 s per save of tests/tiny.py on 4 devices)."""
  if jax.default_backend() != 'cpu':
    return
  absl_logger = logging.get_absl_logger()
  level = absl_logger.level
  # Not orbax's warning about the override on every run.
  absl_logger.setLevel(logging.converter.absl_to_standard(logging.ERROR))
  try:
    ocp.type_handlers.register_type_handler(
      jax.Array,
      ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
      override=True,
    )
  finally:
    absl_logger.setLevel(level)


class _Manager(ocp.CheckpointManager):
  """Orbax's manager, minus its own preemption check.

  Orbax asks JAX's preemption service at every save, with the loop's step
  number. The service remembers the last number it was given from each
  process, so that call would overwrite the run-wide count of agreed points
  that `preemption.reached` reports, and a signal could then be lost. The
  loop decides where to stop; orbax only saves.
  """

  def reached_preemption(self, step: int) -> bool:
    del step
    return False


def barrier_prefix(directory) -> str:
  """The prefix of orbax's cross-process barriers for one directory.

  Orbax names a save's barriers by its step alone. A stage's checkpoints
  and its best-on-validation copy save the same step at the same time
  (asynchronously), and two barriers of one name stop a multi-process run
  ('Barrier _async_write_complete.2 is already ongoing'). Every process
  names the same directory, so the prefix agrees across processes.
  """
  return 'ckpt_' + hashlib.sha256(str(directory).encode()).hexdigest()[:16]


def savable(tree):
  """`tree` in a form orbax saves from every process of a run.

  With several processes orbax saves only global arrays (on the mesh) and
  NumPy arrays (written by process 0). An array on this process's devices
  alone (DLSA's, which every process computes identically from the same
  gathered features) becomes NumPy; restoring puts it back on the device
  of the target's array.
  """
  if jax.process_count() == 1:
    return tree
  return jax.tree.map(
    lambda x: (
      np.asarray(x)
      if (isinstance(x, jax.Array) and x.is_fully_addressable)
      else x
    ),
    tree,
  )


# Fingerprint entries added after checkpoints were first written, with the
# value every earlier run had: a stored fingerprint without one is read as
# having it, so those runs resume at that value and are refused at another.
FINGERPRINT_KEYS_ADDED = {
  ('dlsa', 'final_trained_on'): 'remaining',
  ('stage2_settings', 'method'): 'mislas',
  ('stage2_settings', 'epoch_length'): 'sampler',
}

# How many differing fingerprint entries an error names.
_SHOWN = 5


def with_added_keys(stored: dict) -> dict:
  """`stored` with the FINGERPRINT_KEYS_ADDED entries it lacks (where their
  parent entry exists)."""
  stored = json.loads(json.dumps(stored))
  for path, value in FINGERPRINT_KEYS_ADDED.items():
    parent = stored
    for key in path[:-1]:
      parent = parent.get(key) if isinstance(parent, dict) else None
    if isinstance(parent, dict):
      parent.setdefault(path[-1], value)
  return stored


def _differences(a, b, prefix: str = '') -> list[tuple[str, str, str]]:
  """(dotted key, value in a, value in b) of every leaf where a and b differ;
  'absent' where one lacks the key."""
  if not (isinstance(a, dict) and isinstance(b, dict)):
    return [(prefix or '(the whole fingerprint)', repr(a), repr(b))]
  out = []
  for k in sorted(set(a) | set(b)):
    key = f'{prefix}.{k}' if prefix else str(k)
    if k not in a or k not in b:
      out.append(
        (
          key,
          repr(a[k]) if k in a else 'absent',
          repr(b[k]) if k in b else 'absent',
        )
      )
    elif a[k] != b[k]:
      out.extend(_differences(a[k], b[k], key))
  return out


class StageCheckpoints:
  """The checkpoints of one training run (a stage, or a DLSA component).

  Args:
    directory: where the step folders live (a local path or a URI such as
      gs://bucket/run/stage1/checkpoints).
    fingerprint: JSON-able description of what the checkpoints are for.
    max_to_keep: steps kept on disk (the newest ones); at least 2, so that a
      damaged newest step leaves an older good one.
    read_only: only read (another stage's checkpoints): no directory is
      created, nothing is moved, and a damaged newest step stops the run.
  """

  def __init__(
    self,
    directory,
    fingerprint: dict,
    max_to_keep: int = 2,
    read_only: bool = False,
  ):
    self.directory = files.as_path(directory)
    self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))
    self.read_only = read_only
    self._max_to_keep = max(2, max_to_keep)
    self._check_fingerprint()
    self._open()

  def _open(self):
    _one_replica_writes_on_cpu()
    self.manager = _Manager(
      self.directory,
      item_handlers=ocp.StandardCheckpointHandler(),
      options=ocp.CheckpointManagerOptions(
        max_to_keep=self._max_to_keep,
        create=not self.read_only,
        read_only=self.read_only,
        multiprocessing_options=ocp.options.MultiprocessingOptions(
          barrier_sync_key_prefix=barrier_prefix(self.directory)
        ),
      ),
    )

  @property
  def _fingerprint_path(self):
    return self.directory / 'fingerprint.json'

  def _check_fingerprint(self):
    if not self._fingerprint_path.exists():
      return
    try:
      stored = files.read_json(self._fingerprint_path)
    except (OSError, ValueError) as e:
      raise errors.CheckpointError(
        f'{self._fingerprint_path} cannot be read ({type(e).__name__}: '
        f'{e}), so it is unknown which model the checkpoints next to it '
        'belong to. They were left untouched. Restore the file from a '
        'backup, or use a new --workdir.'
      ) from e
    stored = with_added_keys(stored)
    if stored != self.fingerprint:
      diff = _differences(stored, self.fingerprint)
      shown = '; '.join(
        f'{k}: stored {a}, this run {b}' for k, a, b in diff[:_SHOWN]
      )
      more = f'; and {len(diff) - _SHOWN} more' if len(diff) > _SHOWN else ''
      raise errors.CheckpointError(
        f'The checkpoints in {self.directory} were written for a different '
        f'model or data set (differing entries: {shown}{more}). They were '
        'left untouched. Use a new --workdir for this configuration, or '
        'rerun with the configuration that wrote them.'
      )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def _restore(self, step: int, target):
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def _mismatch(self, step: int, target) -> str | None:
    """Why the arrays of `step` cannot fit `target`, or None if they can.

    Raises anything orbax raises when the step's metadata is unreadable.
    """
    stored = _shapes(self.manager.item_metadata(step).tree)
    wanted = _shapes(target)
    for a, b in itertools.zip_longest(stored, wanted):
      if a != b:
        return (
          f'{len(stored)} arrays stored, {len(wanted)} expected; e.g. '
          f'stored {a}, expected {b}'
        )
    return None

  def restore_latest(self, target) -> tuple[int, object]:
    """(step, state) of the newest good checkpoint, or (0, target) if none.

    Restores into the structure, shapes and shardings of `target`.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        reason = self._mismatch(step, target)
        if reason is None:
          return step, self._restore(step, target)
      except Exception as e:  # pylint: disable=broad-except
        # Orbax and TensorStore raise many types (ValueError, OSError,
        # JSONDecodeError, ...) for damaged files.
        self._damaged(step, e)
        continue
      raise errors.CheckpointError(
        f'Could not restore step {step} from {self.directory}: its arrays '
        f'do not match this model ({reason}). The checkpoint was left '
        'untouched; use a new --workdir or the configuration that wrote it.'
      )
    return 0, target

  def _damaged(self, step: int, error: Exception):
    where = self.directory / str(step)
    what = f'{type(error).__name__}: {str(error).splitlines()[0][:200]}'
    if self.read_only:
      raise errors.CheckpointError(
        f'The newest checkpoint {where} is damaged ({what}). It was left '
        'untouched. Rerun the stage that wrote it (it resumes from its '
        'previous good step and rewrites this one), or point the run at '
        'another checkpoint directory.'
      ) from error
    aside = (
      self.directory.parent
      / f'{self.directory.name}.corrupt'
      / f'{step}-{time.strftime("%Y%m%d-%H%M%S")}'
    )
    logging.warning(
      'Checkpoint %s is damaged (%s); moved it to %s and '
      'trying the previous step.',
      where,
      what,
      aside,
    )
    self.manager.close()
    if jax.process_index() == 0:
      aside.parent.mkdir(parents=True, exist_ok=True)
      where.rename(aside)
    self._open()

  def save(self, step: int, state, force: bool = False):
    if jax.process_index() == 0 and not self._fingerprint_path.exists():
      files.write_json(
        self._fingerprint_path, self.fingerprint, indent=2, sort_keys=True
      )
    self.manager.save(
      step, args=ocp.args.StandardSave(savable(state)), force=force
    )

  def close(self):
    """Waits for the last save to be on disk; a second call does nothing."""
    if self.manager is not None:
      self.manager.wait_until_finished()
      self.manager.close()
      self.manager = None


def read_variables(
  directory, target: dict, step: int | None = None
) -> tuple[int, dict]:
  """(step, variables) of a finished run's checkpoint, for inference.

  Reads only the entries of `target` (e.g. {'params', 'batch_stats'}, as
  shape/dtype structs or arrays) into host NumPy arrays: the optimizer state
  and the latent moments stay on disk. `step` None is the newest step.
  """
  directory = files.as_path(directory)
  manager = ocp.CheckpointManager(
    directory,
    item_handlers=ocp.PyTreeCheckpointHandler(),
    # What read_only implies, spelled out so orbax does not warn about it.
    options=ocp.CheckpointManagerOptions(
      read_only=True, create=False, save_interval_steps=0
    ),
  )
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise errors.CheckpointError(
        f'{directory} holds no checkpoint step. Train the stage first, or '
        'point at the workdir of a finished run.'
      )
    stored = manager.item_metadata(step).tree
    missing = sorted(set(target) - set(stored))
    reason = None if not missing else f'it lacks {", ".join(missing)}'
    for key in target:
      if reason is None:
        for a, b in itertools.zip_longest(
          _shapes(stored[key]), _shapes(target[key])
        ):
          if a != b:
            reason = f'{key}: stored {a}, this model {b}'
            break
    if reason is not None:
      raise errors.CheckpointError(
        f'Step {step} in {directory} does not fit the model its config '
        f'describes ({reason}). Was the workdir written by another '
        'version or configuration? Pass the matching workdir and stage.'
      )
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restore_args = jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract
    )
    variables = manager.restore(
      step,
      args=ocp.args.PyTreeRestore(
        item=abstract, restore_args=restore_args, partial_restore=True
      ),
    )
  finally:
    manager.close()
  return step, variables
