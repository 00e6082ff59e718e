"""The best-on-validation model of a stage, beside its final one.

MiSLAS (and most long-tailed papers) publish the best test accuracy over
the epochs, which chooses on the test set. We report two numbers per stage
instead, neither of which looks at test to choose: the final step's, and
that of the parameters that scored best on the validation split. During
training every `eval.val_every` steps (default: once per epoch) and at the
end, the model is evaluated on the validation split and offered to the
loop's `Selection` (the one selection rule: strictly better by
`eval.select_metric`, the first best wins). A kept candidate's parameters
and BatchNorm statistics are saved to `<stage>/best_on_val/<step>` (orbax,
with the score and step inside), so a killed run resumes with the same
choice.
"""

from absl import logging
import jax

from lcreg_jax import checkpoints
from lcreg_jax import loop
from lcreg_jax.evaluate import metrics


def enabled(ctx) -> bool:
  """Only with a validation split (data.val_per_class > 0, a val list or a
  TFDS val split) and eval.select_on_val."""
  return bool(ctx.config.eval.select_on_val and 'val' in ctx.info.split_sizes)


def _fingerprint(ctx, fingerprint: dict) -> dict:
  # Runs before eval.select_metric chose by top-1 and left it out: their
  # folders still resume and load with select_metric='image_mean'.
  metric = ctx.config.eval.select_metric
  extra = {} if metric == 'image_mean' else dict(select_metric=metric)
  return dict(fingerprint, best_on_val=True, **extra)


def _variables(state) -> dict:
  return dict(params=state.params, batch_stats=state.batch_stats)


def _on_disk(selection: loop.Selection) -> dict:
  # The kept candidate with its score and step, as host NumPy: the same on
  # every process, saved from process 0 (orbax cannot save a jax.Array on
  # one local device when there are several processes).
  return dict(
    selection.best, score=selection.best_score, step=selection.best_step
  )


class BestOnVal:
  """Evaluates on validation and keeps the best parameters on disk.

  Called by the loop as `evaluate_fn(step, state) -> (state, scores)`; the
  state is returned unchanged. `selection` holds the score and step of the
  best so far; its candidate is only held until it is saved.
  """

  def __init__(self, ctx, stage: str, state, fingerprint: dict, predict):
    self._ctx, self._stage, self._predict = ctx, stage, predict
    self._metric = ctx.config.eval.select_metric
    self._ckpt = checkpoints.StageCheckpoints(
      ctx.stage_dir(stage) / 'best_on_val', _fingerprint(ctx, fingerprint)
    )
    # The newest saved candidate is the best so far (only better ones are
    # saved). One whose step lies beyond the resumed training step is the
    # same model the resumed run will reach again, so it stays the best.
    _, saved = self._ckpt.restore_latest(
      _on_disk(loop.Selection.start(None, _variables(state)))
    )
    self.selection = loop.Selection.start(
      None, None, saved['score'], saved['step']
    )

  def __call__(self, step: int, state):
    pred = self._predict(self._ctx, state, 'val')
    scores = metrics.validation_scores(
      pred['logits'], pred['labels'], self._ctx.info.num_classes
    )
    score = scores[metrics.SELECT_SCORES[self._metric]]
    offered = self.selection.offer(step, _variables(state), score)
    if offered is not self.selection:  # kept: a new best
      logging.info(
        '%s: step %d, validation %s %.4f (best so far).',
        self._stage,
        step,
        self._metric,
        score,
      )
      self._ckpt.save(step, _on_disk(offered))
      offered = offered.replace(best=None)
    self.selection = offered
    return state, {f'val_{k}': v for k, v in scores.items()}

  def close(self):
    self._ckpt.close()


def load(ctx, stage: str, state, fingerprint: dict):
  """(state with the best-on-val parameters, step, its validation score by
  eval.select_metric), or None if the stage kept none."""
  directory = ctx.stage_dir(stage) / 'best_on_val'
  if not directory.exists():
    return None
  ckpt = checkpoints.StageCheckpoints(
    directory, _fingerprint(ctx, fingerprint), read_only=True
  )
  try:
    step, best = ckpt.restore_latest(
      _on_disk(loop.Selection.start(None, _variables(state)))
    )
  finally:
    ckpt.close()
  if not step:
    return None
  state = state.replace(params=best['params'], batch_stats=best['batch_stats'])
  return state, int(best['step']), float(jax.device_get(best['score']))
