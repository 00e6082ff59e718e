"""Checkpoints refuse another model's files and never harm them; damage is
recognised as damage, not as a mismatch."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcreg_jax import checkpoints
from lcreg_jax import errors
from tests.test_loop import _digest


def _write(directory, steps=(1, 2), value=1.0, fingerprint=None):
  ckpt = checkpoints.StageCheckpoints(directory, fingerprint or {'m': 1})
  for s in steps:
    ckpt.save(s, {'w': jnp.full(3, value * s), 'b': jnp.zeros(2)})
  ckpt.close()


TARGET = {'w': jnp.zeros(3), 'b': jnp.zeros(2)}


def test_restore_latest_and_empty_directory(tmp_path):
  ckpt = checkpoints.StageCheckpoints(tmp_path / 'c', {'m': 1})
  assert ckpt.restore_latest(TARGET) == (0, TARGET)
  ckpt.close()
  _write(tmp_path / 'c')
  ckpt = checkpoints.StageCheckpoints(tmp_path / 'c', {'m': 1})
  step, state = ckpt.restore_latest(TARGET)
  ckpt.close()
  assert step == 2 and np.array_equal(state['w'], [2.0, 2.0, 2.0])
  assert json.load(open(tmp_path / 'c' / 'fingerprint.json')) == {'m': 1}


def test_another_models_checkpoints_are_refused_untouched(tmp_path):
  _write(tmp_path / 'c')
  before = _digest(tmp_path / 'c')
  with pytest.raises(errors.CheckpointError, match='differing entries: m'):
    checkpoints.StageCheckpoints(tmp_path / 'c', {'m': 2})
  assert _digest(tmp_path / 'c') == before


def test_a_key_added_later_matches_at_its_old_value_only(tmp_path):
  # Written before dlsa.final_trained_on existed; every run then had
  # 'remaining'.
  _write(tmp_path / 'c', fingerprint={'dlsa': {'depth': 1}})
  before = _digest(tmp_path / 'c')
  old = {'dlsa': {'depth': 1, 'final_trained_on': 'remaining'}}
  checkpoints.StageCheckpoints(tmp_path / 'c', old).close()
  with pytest.raises(
    errors.CheckpointError,
    match="dlsa.final_trained_on: stored 'remaining', this run 'all'",
  ):
    checkpoints.StageCheckpoints(
      tmp_path / 'c', {'dlsa': {'depth': 1, 'final_trained_on': 'all'}}
    )
  with pytest.raises(
    errors.CheckpointError, match='dlsa.depth: stored 1, this run 2'
  ):
    checkpoints.StageCheckpoints(tmp_path / 'c', {'dlsa': {'depth': 2}})
  assert _digest(tmp_path / 'c') == before


def test_same_fingerprint_other_shapes_is_a_mismatch_not_damage(tmp_path):
  _write(tmp_path / 'c')
  before = _digest(tmp_path / 'c')
  ckpt = checkpoints.StageCheckpoints(tmp_path / 'c', {'m': 1})
  with pytest.raises(errors.CheckpointError, match='do not match this model'):
    ckpt.restore_latest({'w': jnp.zeros(4), 'b': jnp.zeros(2)})
  ckpt.close()
  assert _digest(tmp_path / 'c') == before
  assert not os.path.exists(f'{tmp_path}/c.corrupt')


def test_unreadable_fingerprint_is_named(tmp_path):
  _write(tmp_path / 'c')
  (tmp_path / 'c' / 'fingerprint.json').write_text('{not json')
  with pytest.raises(errors.CheckpointError, match='fingerprint.json'):
    checkpoints.StageCheckpoints(tmp_path / 'c', {'m': 1})


@pytest.mark.parametrize('damage', ['metadata', 'all_steps'])
def test_damaged_steps(tmp_path, damage):
  _write(tmp_path / 'c')
  for step in (2,) if damage == 'metadata' else (1, 2):
    (tmp_path / 'c' / str(step) / 'default' / '_METADATA').write_text('{x')
  before = _digest(tmp_path / 'c')
  # Reading another stage's checkpoints: stop, name the step, touch nothing.
  ro = checkpoints.StageCheckpoints(tmp_path / 'c', {'m': 1}, read_only=True)
  with pytest.raises(errors.CheckpointError, match=f'{tmp_path}/c/2 is dam'):
    ro.restore_latest(TARGET)
  ro.close()
  assert _digest(tmp_path / 'c') == before
  # Resuming one's own run: fall back to the newest good step, if any.
  ckpt = checkpoints.StageCheckpoints(tmp_path / 'c', {'m': 1})
  step, state = ckpt.restore_latest(TARGET)
  ckpt.close()
  assert step == (1 if damage == 'metadata' else 0)
  assert len(os.listdir(f'{tmp_path}/c.corrupt')) == (
    1 if damage == 'metadata' else 2
  )


def test_checkpoint_saves_leave_the_preemption_count_alone(
  tmp_path, monkeypatch
):
  """Orbax's manager would report the loop's step to JAX's preemption
  service at each save, overwriting the run-wide count."""
  calls = []
  monkeypatch.setattr(
    'jax.experimental.multihost_utils.reached_preemption_sync_point',
    lambda n: calls.append(n) or False,
  )
  ckpt = checkpoints.StageCheckpoints(tmp_path / 'c', {'a': 1})
  ckpt.save(3, {'x': np.zeros(2, np.float32)})
  ckpt.close()
  assert calls == []


def test_arrays_of_one_process_are_saved_as_host_copies(monkeypatch):
  tree = {'local': jax.numpy.arange(3.0), 'host': np.ones(2), 'n': 4}
  assert checkpoints.savable(tree) is tree  # one process: as is
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  out = checkpoints.savable(tree)
  assert type(out['local']) is np.ndarray and out['host'] is tree['host']
  np.testing.assert_array_equal(out['local'], [0.0, 1.0, 2.0])


def test_each_checkpoint_directory_has_its_own_barriers(tmp_path):
  """A stage's checkpoints and its best-on-validation copy save the same
  step at once; with one barrier name for both, 2 processes abort."""
  a, b = (
    tmp_path / 'stage1' / 'checkpoints',
    tmp_path / 'stage1' / 'best_on_val',
  )
  assert checkpoints.barrier_prefix(a) != checkpoints.barrier_prefix(b)
  assert checkpoints.barrier_prefix(a) == checkpoints.barrier_prefix(str(a))
  ckpt = checkpoints.StageCheckpoints(a, {'a': 1})
  options = ckpt.manager._options.multiprocessing_options  # pylint: disable=protected-access
  assert options.barrier_sync_key_prefix == checkpoints.barrier_prefix(a)
  ckpt.close()


def test_a_replicated_array_is_saved_from_one_replica_on_cpu(
  tmp_path, monkeypatch
):
  """Orbax's CPU default would cut a replicated array into one slice per
  device (a slicing program per shape, every save); on CPU one replica
  writes it whole, and it restores exactly."""
  mesh = jax.make_mesh((4,), ('data',))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  tree = {'w': jax.device_put(jnp.arange(64.0).reshape(16, 4), replicated)}
  slices = []
  real = jax.lax.slice_in_dim
  monkeypatch.setattr(
    jax.lax, 'slice_in_dim', lambda *a, **k: slices.append(a) or real(*a, **k)
  )
  ckpt = checkpoints.StageCheckpoints(tmp_path / 'c', {'m': 1})
  ckpt.save(1, tree)
  ckpt.close()
  assert slices == []
  ckpt = checkpoints.StageCheckpoints(tmp_path / 'c', {'m': 1})
  step, restored = ckpt.restore_latest(tree)
  ckpt.close()
  assert step == 1 and restored['w'].sharding.is_equivalent_to(replicated, 2)
  np.testing.assert_array_equal(restored['w'], np.arange(64.0).reshape(16, 4))
