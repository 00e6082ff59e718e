"""The shared loop, tested once for all its users (stage 1, stage 2, DLSA's
flows and classifiers) on a tiny least-squares problem: checkpoint cadence,
exact resume, the NaN guard, model selection, a damaged checkpoint."""

import hashlib
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lcreg_jax import checkpoints
from lcreg_jax import errors
from lcreg_jax import loop
from tests import killing

TX = optax.sgd(0.1, momentum=0.5)
W_TRUE = np.array([1.0, -2.0, 0.5], np.float32)


@flax.struct.dataclass
class State:
  params: jax.Array
  opt_state: optax.OptState


def _initial():
  params = jnp.zeros(3, jnp.float32)
  return State(params=params, opt_state=TX.init(params))


@jax.jit
def _step(state, key):
  x = jax.random.normal(key, (8, 3))
  y = x @ W_TRUE
  loss, grad = jax.value_and_grad(lambda w: jnp.mean((x @ w - y) ** 2))(
    state.params
  )
  updates, opt_state = TX.update(grad, state.opt_state)
  params = optax.apply_updates(state.params, updates)
  return State(params, opt_state), dict(
    loss=loss, params_finite=jnp.all(jnp.isfinite(params))
  )


def _fit(workdir, total=10, kill_at=None, step_fn=None, seed=0, **kw):
  seen = []

  def hook(name, step, state):
    seen.append(step)
    if step == kill_at:
      raise killing.Kill()

  state = loop.fit(
    kw.pop('state', _initial()),
    name='toy',
    step_fn=step_fn or (lambda s, key: _step(s, key)),
    batches=loop.step_keys(seed),
    total_steps=total,
    checkpoints=checkpoints.StageCheckpoints(
      os.path.join(workdir, 'checkpoints'), {'model': 'toy'}
    ),
    workdir=str(workdir),
    log_every=2,
    checkpoint_every=3,
    hooks=[hook],
    **kw,
  )
  return jax.device_get(state), seen


def _saved_steps(workdir):
  return sorted(
    int(p)
    for p in os.listdir(os.path.join(workdir, 'checkpoints'))
    if p.isdigit()
  )


def _digest(directory):
  h = hashlib.sha256()
  for root, _, files in sorted(os.walk(directory)):
    for name in sorted(files):
      with open(os.path.join(root, name), 'rb') as f:
        h.update(name.encode() + f.read())
  return h.hexdigest()


def test_cadence_and_exact_resume_after_a_kill(tmp_path):
  ref, seen = _fit(tmp_path / 'ref')
  assert seen == list(range(1, 11))
  # Saved every 3 steps and at the end; the newest two are kept.
  assert _saved_steps(tmp_path / 'ref') == [9, 10]
  # It learns (so the state is not trivially the same everywhere).
  assert np.linalg.norm(ref.params - W_TRUE) < 0.3 * np.linalg.norm(W_TRUE)

  with pytest.raises(killing.Kill):
    _fit(tmp_path / 'run', kill_at=8)
  assert _saved_steps(tmp_path / 'run') == [3, 6]
  got, seen = _fit(tmp_path / 'run')
  assert seen == [7, 8, 9, 10]  # resumed after step 6
  np.testing.assert_array_equal(got.params, ref.params)
  # A finished run is not trained again.
  again, seen = _fit(tmp_path / 'run')
  assert seen == [] and np.array_equal(again.params, ref.params)


def test_resume_depends_on_the_step_keys(tmp_path):
  """The check above can fail: resuming with other data gives other params."""
  ref, _ = _fit(tmp_path / 'ref')
  with pytest.raises(killing.Kill):
    _fit(tmp_path / 'run', kill_at=7)
  got, _ = _fit(tmp_path / 'run', seed=1)
  assert not np.array_equal(got.params, ref.params)


def test_nan_stops_and_leaves_the_last_good_checkpoint(tmp_path):
  def poisoned(state, key):
    new, metrics = _step(state, key)
    bad = jnp.all(key == jax.random.fold_in(jax.random.PRNGKey(0), 5))
    return new, dict(metrics, loss=jnp.where(bad, jnp.nan, metrics['loss']))

  with pytest.raises(killing.Kill):
    _fit(tmp_path, kill_at=4)
  before = _digest(tmp_path / 'checkpoints')
  with pytest.raises(errors.NonFiniteLossError) as e:
    _fit(tmp_path, step_fn=poisoned)
  assert 'step 5' in str(e.value) and 'step 3' in str(e.value)
  assert _digest(tmp_path / 'checkpoints') == before
  assert _saved_steps(tmp_path) == [3]


def test_selection_keeps_the_best_and_resumes_with_it(tmp_path):
  scores = {2: 0.5, 4: 0.9, 6: 0.7, 8: 0.9, 10: 0.1}
  calls = []

  def evaluate(step, state):
    calls.append(step)
    return state.offer(step, state.train.params, scores[step]), {}

  def fit(workdir, kill_at=None):
    return _fit(
      workdir,
      kill_at=kill_at,
      state=loop.Selection.start(_initial(), jnp.zeros(3)),
      step_fn=lambda s, key: s.advance(_step, key),
      evaluate_every=2,
      evaluate_fn=evaluate,
    )

  ref, _ = fit(tmp_path / 'ref')
  assert calls == [2, 4, 6, 8, 10]
  assert int(ref.best_step) == 4 and float(ref.best_score) == np.float32(0.9)
  calls.clear()
  with pytest.raises(killing.Kill):
    fit(tmp_path / 'run', kill_at=7)
  got, _ = fit(tmp_path / 'run')
  assert calls == [2, 4, 6, 8, 10]  # 2, 4, 6 before the kill
  assert int(got.best_step) == 4
  np.testing.assert_array_equal(got.best, ref.best)


def test_damaged_latest_checkpoint_falls_back_and_is_kept_aside(tmp_path):
  ref, _ = _fit(tmp_path)
  ckpt = tmp_path / 'checkpoints'
  damaged = []
  for root, _, files in os.walk(ckpt / '10'):
    for name in files:
      if 'ocdbt' in root or root.endswith('/d'):
        with open(os.path.join(root, name), 'r+b') as f:
          f.truncate(3)
        damaged.append(name)
  assert damaged
  aside_digest = _digest(ckpt / '10')
  got, seen = _fit(tmp_path)
  assert seen == [10]  # resumed from step 9
  np.testing.assert_array_equal(got.params, ref.params)
  assert _saved_steps(tmp_path) == [9, 10]
  (aside,) = os.listdir(f'{ckpt}.corrupt')
  assert aside.startswith('10-')
  assert _digest(f'{ckpt}.corrupt/{aside}') == aside_digest


def test_progress_line_follows_the_run_and_its_resume(
  tmp_path, monkeypatch, capsys
):
  monkeypatch.setenv('LCREG_PROGRESS', '1')
  with pytest.raises(killing.Kill):
    _fit(tmp_path, kill_at=4, batch_size=8)
  first = capsys.readouterr().out
  assert first.startswith('\rtoy: step 1/10') and first.endswith('\n')
  _fit(tmp_path, batch_size=8)
  resumed = capsys.readouterr().out
  # Resumed after the checkpoint of step 3: the line starts at step 4 and
  # ends on the last step with its speed in images (8 per step).
  assert resumed.startswith('\rtoy: step 4/10')
  last = resumed.rstrip('\n').split('\r')[-1]
  assert last.startswith('toy: step 10/10 (100%) · ') and ' img/s' in last


def test_one_selection_rule_strictly_better_in_float32():
  assert loop.is_better(0.5, 0.25)
  assert not loop.is_better(0.5, 0.5)  # the first best wins
  # Equal once stored as float32: not better after a resume.
  assert not loop.is_better(1 / 3, np.float32(1 / 3))
  assert not loop.is_better(0.1, np.nan)  # no validation score
  kept = loop.Selection.start('train', 'first', 0.5).offer(3, 'second', 0.5)
  assert kept.best == 'first' and int(kept.best_step) == 0


def test_keep_last_keeps_any_candidate_and_records_a_given_score():
  start = loop.Selection.start('train', 'first', 0.5, step=2)
  assert int(start.best_step) == 2
  # No validation: the last candidate, the score left as it was.
  kept = start.keep_last(3, 'second').keep_last(4, 'third')
  assert (kept.best, int(kept.best_step)) == ('third', 4)
  assert float(kept.best_score) == 0.5 and kept.train == 'train'
  # A score given is recorded, even a worse one (a caller's own rule).
  worse = start.keep_last(5, 'fourth', -1.0)
  assert float(worse.best_score) == -1.0 and worse.best == 'fourth'
  # offer returns the same object when it keeps nothing (BestOnVal saves
  # only what was kept).
  assert start.offer(6, 'fifth', 0.5) is start
