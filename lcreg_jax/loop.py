"""The training loop every trainer uses: stage 1, stage 2, and DLSA's flows
and classifiers. It resumes, steps, logs, guards against NaN, evaluates for
model selection and checkpoints, the same way for all of them.
"""

import os
from typing import Any, Callable, Iterable, Iterator

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import flax
import jax
import numpy as np

from lcreg_jax import checkpoints as checkpoints_lib
from lcreg_jax import errors
from lcreg_jax import preemption
from lcreg_jax import progress as progress_lib

# hook(name, step, state), called after every step (tests use it to kill runs).
Hook = Callable[[str, int, object], None]


def is_better(score, best_score) -> bool:
  """The one model-selection rule: strictly better, compared in float32 as
  the score is stored, so the first best wins and an equal score
  re-evaluated after a resume never counts as better."""
  return bool(np.float32(score) > np.float32(best_score))


@flax.struct.dataclass
class Selection:
  """The one selection mechanism: candidates offered in step order, the
  best kept (`is_better`), and what it is kept beside.

  DLSA's flows and classifiers hold their training state in `train`, so the
  loop checkpoints the choice with the training and a resumed run
  continues the same selection. A stage's best-on-validation step
  (stages/best_on_val.py) holds no training state here (`train` None): it
  saves each kept candidate with its score and step in a checkpoint of its
  own and starts again from the newest one. The score and step are host
  NumPy scalars: every process holds the same ones, and orbax saves them
  from process 0 (a jax.Array on one local device could not be saved by
  several processes).
  """

  train: Any
  best: Any
  best_score: np.ndarray  # float32 0-d; -inf until a scored candidate
  best_step: np.ndarray  # int32 0-d

  @classmethod
  def start(
    cls, train, best, score: float = -np.inf, step: int = 0
  ) -> 'Selection':
    return cls(
      train=train,
      best=best,
      best_score=np.asarray(score, np.float32),
      best_step=np.asarray(step, np.int32),
    )

  def offer(self, step: int, candidate, score: float) -> 'Selection':
    """Keeps `candidate` if it scores strictly better (the first best wins);
    returns self unchanged otherwise."""
    if is_better(score, self.best_score):
      return self.keep_last(step, candidate, score)
    return self

  def keep_last(
    self, step: int, candidate, score: float | None = None
  ) -> 'Selection':
    """Keeps `candidate` whatever its score: without validation (score
    None, the kept score stays what it was) the last one wins, and a rule
    of the caller's may prefer the latest (DLSA's authors' flow metric)."""
    best_score = (
      self.best_score if score is None else np.asarray(score, np.float32)
    )
    return self.replace(
      best=candidate,
      best_score=best_score,
      best_step=np.asarray(step, np.int32),
    )

  def advance(self, train_step: Callable, *args) -> tuple['Selection', dict]:
    """One step of the training state: `train_step(train, *args)`."""
    train, metrics = train_step(self.train, *args)
    return self.replace(train=train), metrics


def step_keys(seed: int) -> Callable[[int], Iterator[jax.Array]]:
  """`batches` for trainers that sample on the device: the PRNG key of
  step s is fold_in(key(seed), s), whatever step a run resumes from."""
  base = jax.random.PRNGKey(seed)

  def batches(start: int):
    step = start
    while True:
      step += 1
      yield jax.random.fold_in(base, step)

  return batches


def _check_finite(
  metrics: dict,
  step: int,
  name: str,
  directory: str,
  last_saved: int | None,
  advice: str,
):
  bad = {
    k: float(v)
    for k, v in metrics.items()
    if k != 'params_finite' and not np.isfinite(v)
  }
  if bad or not metrics.get('params_finite', True):
    saved = (
      f'the last good checkpoint (step {last_saved}) in {directory} is '
      'untouched'
      if last_saved
      else 'no checkpoint was written'
    )
    raise errors.NonFiniteLossError(
      f'{name}: the loss or parameters became NaN/infinite at step {step} '
      f'(non-finite: {bad or "parameters"}); training stopped and {saved}. '
      f'{advice}'
    )


def fit(
  state,
  *,
  name: str,
  step_fn: Callable,
  batches: Callable[[int], Iterator],
  total_steps: int,
  checkpoints: checkpoints_lib.StageCheckpoints,
  workdir: str,
  log_every: int,
  checkpoint_every: int,
  evaluate_every: int = 0,
  evaluate_fn: Callable | None = None,
  advice: str = 'Lower the learning rate.',
  hooks: Iterable[Hook] = (),
  batch_size: int | None = None,
  unit: str = 'img',
):
  """Trains `state` to `total_steps`, resuming from the newest checkpoint.

  Args:
    state: the initial state (also the structure checkpoints restore into).
    name: for logs, errors and hooks ('stage1', 'dlsa/flow_0', ...).
    step_fn: `(state, batch) -> (state, metrics)`; metrics hold scalars and
      `params_finite`.
    batches: `start_step -> iterator` of the batches of steps start_step+1,
      start_step+2, ... (so a resumed run reads what an uninterrupted one
      would).
    total_steps: the last step; a run whose checkpoint is there returns it.
    checkpoints: where the state is saved every `checkpoint_every` steps and
      at the end, after the finiteness check (a NaN never overwrites a good
      checkpoint).
    workdir: TensorBoard events of this run.
    log_every: steps between metric summaries (and NaN checks).
    evaluate_every, evaluate_fn: every `evaluate_every` steps and at the end,
      `state, scores = evaluate_fn(step, state)` (model selection keeps its
      choice inside the state, so it is checkpointed and resumes with it).
    advice: what to try when the loss becomes non-finite.
    hooks: called as hook(name, step, state) after every step.
    batch_size, unit: `batch_size` `unit`s (images; DLSA: features, pairs)
      per step, for the progress line's speed (None: it shows steps/s).
  Returns:
    The state after `total_steps`.
  """
  start, state = _resume(state, name, total_steps, checkpoints)
  if start >= total_steps:
    return state
  reports = _Reports(name, workdir, total_steps, start, batch_size, unit)
  data = iter(batches(start))
  pending, last_saved = [], start or None
  try:
    for step in range(start + 1, total_steps + 1):
      with jax.profiler.StepTraceAnnotation(name, step_num=step):
        state, metrics = step_fn(state, next(data))
      pending.append(metrics)
      reports.stepped(step)
      last, stop = step == total_steps, preemption.reached()
      save = step % checkpoint_every == 0 or last or stop
      evaluate = evaluate_fn is not None and (
        step % evaluate_every == 0 or last
      )
      if save or evaluate or step % log_every == 0:
        reports.metrics(step, pending, checkpoints, last_saved, advice)
        pending = []
      if evaluate:
        state, scores = evaluate_fn(step, state)
        reports.writer.write_scalars(step, scores)
      if save:
        checkpoints.save(step, state)
        last_saved = step
      if stop and not last:
        checkpoints.close()  # waits until the checkpoint is on disk
        raise _preempted(name, step, checkpoints)
      for hook in hooks:
        hook(name, step, state)
  finally:
    reports.close()
    checkpoints.close()
  return state


def _preempted(name: str, step: int, checkpoints) -> preemption.Preempted:
  return preemption.Preempted(
    preemption.stopped_message(name, step, checkpoints.directory)
  )


def _resume(state, name: str, total_steps: int, checkpoints):
  """(start step, state) from the newest checkpoint. Closes `checkpoints`
  when there is nothing left to train, and stops at the agreed point before
  the first step when a signal came before this loop."""
  start, state = checkpoints.restore_latest(state)
  if start:
    logging.info(
      '%s: resumed from step %d of %d (%s).',
      name,
      start,
      total_steps,
      checkpoints.directory,
    )
  if start >= total_steps:
    checkpoints.close()
  elif preemption.reached():
    checkpoints.close()
    raise _preempted(name, start, checkpoints)
  return start, state


class _Reports:
  """What one loop reports: the TensorBoard writer (logging only on
  processes > 0), clu's progress report and the progress line."""

  def __init__(self, name, workdir, total_steps, start, batch_size, unit):
    self.name = name
    self.writer = metric_writers.create_default_writer(
      os.fspath(workdir), just_logging=jax.process_index() > 0
    )
    self.progress = periodic_actions.ReportProgress(
      num_train_steps=total_steps, writer=self.writer
    )
    self.line = progress_lib.ProgressLine(
      name, total_steps, start, batch_size=batch_size, unit=unit
    )

  def stepped(self, step: int):
    self.progress(step)
    self.line.update(step)

  def metrics(self, step, pending, checkpoints, last_saved, advice):
    """Checks the metrics of the steps up to `step` (one transfer for them
    all) and writes their mean."""
    host = jax.device_get(pending)
    for i, m in enumerate(host):
      _check_finite(
        m,
        step - len(host) + 1 + i,
        self.name,
        checkpoints.directory,
        last_saved,
        advice,
      )
    means = {k: np.mean([m[k] for m in host]) for k in host[0]}
    means.pop('params_finite', None)
    self.writer.write_scalars(step, {k: float(v) for k, v in means.items()})

  def close(self):
    self.line.close()
    self.writer.flush()
