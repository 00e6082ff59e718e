"""Per-stage orbax checkpoints that resume, and refuse another model's.

Each stage directory holds `fingerprint.json` (what the checkpoints were made
for: model config, class count, stage) next to orbax's step folders. A run
whose fingerprint differs stops before touching the directory, so a wrong
`--workdir` can never overwrite someone's good checkpoints.
"""

import json
import os

import jax
import orbax.checkpoint as ocp

from lcreg_jax import errors


class StageCheckpoints:

  def __init__(self, directory: str, fingerprint: dict, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))
    self._check_fingerprint()
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             create=True))

  @property
  def _fingerprint_path(self):
    return os.path.join(self.directory, 'fingerprint.json')

  def _check_fingerprint(self):
    if not os.path.exists(self._fingerprint_path):
      return
    with open(self._fingerprint_path) as f:
      stored = json.load(f)
    if stored != self.fingerprint:
      diff = sorted(k for k in set(stored) | set(self.fingerprint)
                    if stored.get(k) != self.fingerprint.get(k))
      raise errors.CheckpointMismatchError(
          f'The checkpoints in {self.directory} were written for a different '
          f'model or data set (differing entries: {", ".join(diff)}; stored '
          f'{ {k: stored.get(k) for k in diff} }, this run '
          f'{ {k: self.fingerprint.get(k) for k in diff} }). They were left '
          'untouched. Use a new --workdir for this configuration, or rerun '
          'with the configuration that wrote them.')

  def latest_step(self):
    return self.manager.latest_step()

  def restore(self, target, step=None):
    """Restores into the structure, shapes and shardings of `target`."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except (ValueError, KeyError, TypeError) as e:
      raise errors.CheckpointMismatchError(
          f'Could not restore step {step} from {self.directory}: its arrays do '
          f'not match this model ({type(e).__name__}: {str(e)[:300]}). The '
          'checkpoint was left untouched; use a new --workdir or the '
          'configuration that wrote it.') from e

  def save(self, step: int, state, force: bool = False):
    if jax.process_index() == 0 and not os.path.exists(self._fingerprint_path):
      os.makedirs(self.directory, exist_ok=True)
      with open(self._fingerprint_path, 'w') as f:
        json.dump(self.fingerprint, f, indent=2, sort_keys=True)
    self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
