"""The best-on-validation model of a stage, beside its final one.

MiSLAS (and most long-tailed papers) publish the best test accuracy over
the epochs, which chooses on the test set. We report two numbers per stage
instead, neither of which looks at test to choose: the final step's, and
that of the parameters that scored best on the validation split. During
training every `eval.val_every` steps (default: once per epoch) and at the
end, the model is evaluated on the validation split; a strictly better top-1
saves its parameters and BatchNorm statistics to
`<stage>/best_on_val/<step>` (orbax, with the score inside), so a killed run
resumes with the same choice.
"""

from absl import logging
import jax
import numpy as np

from lcreg_jax import checkpoints
from lcreg_jax import loop
from lcreg_jax import losses


def enabled(ctx) -> bool:
  """Only with a validation split (data.val_per_class > 0, a val list or a
  TFDS val split) and eval.select_on_val."""
  return bool(ctx.config.eval.select_on_val and
              'val' in ctx.info.split_sizes)


def _candidate(state, score=-np.inf, step=0) -> dict:
  # Score and step as host NumPy: the same on every process, saved from
  # process 0 (orbax cannot save a jax.Array on one local device when there
  # are several processes).
  return dict(params=state.params, batch_stats=state.batch_stats,
              score=np.asarray(score, np.float32),
              step=np.asarray(step, np.int32))


class BestOnVal:
  """Evaluates on validation and keeps the best parameters on disk.

  Called by the loop as `evaluate_fn(step, state) -> (state, scores)`; the
  state is returned unchanged.
  """

  def __init__(self, ctx, stage: str, state, fingerprint: dict, predict):
    self._ctx, self._stage, self._predict = ctx, stage, predict
    self._ckpt = checkpoints.StageCheckpoints(
        ctx.stage_dir(stage) / 'best_on_val', dict(fingerprint, best_on_val=True))
    # The newest saved candidate is the best so far (only better ones are
    # saved). One whose step lies beyond the resumed training step is the
    # same model the resumed run will reach again, so it stays the best.
    _, best = self._ckpt.restore_latest(_candidate(state))
    self.score = float(best['score'])

  def __call__(self, step: int, state):
    pred = self._predict(self._ctx, state, 'val')
    score = float(losses.top1(np.asarray(pred['logits']), pred['labels']))
    if loop.is_better(score, self.score):
      logging.info('%s: step %d, validation top-1 %.4f (best so far).',
                   self._stage, step, score)
      self._ckpt.save(step, _candidate(state, score, step))
      self.score = score
    return state, {'val_top1': score}

  def close(self):
    self._ckpt.close()


def load(ctx, stage: str, state, fingerprint: dict):
  """(state with the best-on-val parameters, step, val top-1), or None if
  the stage kept none."""
  directory = ctx.stage_dir(stage) / 'best_on_val'
  if not directory.exists():
    return None
  ckpt = checkpoints.StageCheckpoints(
      directory, dict(fingerprint, best_on_val=True), read_only=True)
  try:
    step, best = ckpt.restore_latest(_candidate(state))
  finally:
    ckpt.close()
  if not step:
    return None
  state = state.replace(params=best['params'],
                        batch_stats=best['batch_stats'])
  return state, int(best['step']), float(jax.device_get(best['score']))
