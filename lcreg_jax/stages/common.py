"""What every stage shares: the run's context, the schedule length, the
checkpoint fingerprint, training through the loop, and test evaluation."""

import dataclasses

from absl import logging
import jax

from lcreg_jax import checkpoints
from lcreg_jax import files
from lcreg_jax import loop
from lcreg_jax import parallel
from lcreg_jax.data import dataset as dataset_lib
from lcreg_jax.data import samplers
from lcreg_jax.evaluate import metrics
from lcreg_jax.evaluate import predict as predict_lib
from lcreg_jax.evaluate import report
from lcreg_jax.models import resnet
from lcreg_jax.stages import best_on_val


@dataclasses.dataclass(frozen=True)
class Context:
  """One run: its resolved config, data, mesh, workdir and loop hooks."""

  config: object
  dataset: dataset_lib.Dataset
  mesh: jax.sharding.Mesh
  workdir: str
  hooks: tuple[loop.Hook, ...] = ()

  @property
  def info(self) -> dataset_lib.DatasetInfo:
    return self.dataset.info

  def stage_dir(self, stage: str):
    """The stage's folder: an epath.Path, local or e.g. gs://."""
    return files.as_path(self.workdir) / stage


def schedule_length(
  stage_config, info, sampler: str = 'shuffle'
) -> tuple[int, int]:
  """(steps per epoch, total steps) of a stage reading the training set in
  `sampler`'s order; `steps`, when set, wins over `epochs`."""
  if sampler == 'class_balanced':
    spe = samplers.class_balanced_steps_per_epoch(
      info.class_counts,
      stage_config.batch_size,
      stage_config.epoch_length,
      stage_config.get('method', 'mislas'),
    )
  else:
    spe = samplers.steps_per_epoch(
      samplers.epoch_samples(info.class_counts, sampler),
      stage_config.batch_size,
    )
  total = stage_config.steps or int(round(stage_config.epochs * spe))
  return spe, max(total, 1)


def _old_zero_init_residual(model: dict) -> bool:
  # The bottleneck block always zeroed its last BatchNorm scale.
  return resnet.BACKBONES[model['backbone']]['block'] == 'bottleneck'


# Model keys added after checkpoints were first written, with the value
# every earlier run used (or a function of the model config giving it). At
# that value they are left out of the fingerprint, so the checkpoints of
# earlier runs still resume and load.
MODEL_KEYS_ADDED = {
  'head': 'linear',
  'normed_scale': 30.0,
  'init': 'flax',
  'zero_init_residual': _old_zero_init_residual,
}


def old_value(key: str, model: dict):
  """The value of the added model key `key` in runs written before it."""
  value = MODEL_KEYS_ADDED[key]
  return value(model) if callable(value) else value


def fingerprint(ctx: Context, stage: str) -> dict:
  """What a stage's checkpoints are for; a resumed run must match it."""
  model = ctx.config.model.to_dict()
  model = {
    k: v
    for k, v in model.items()
    if k not in MODEL_KEYS_ADDED or v != old_value(k, model)
  }
  return dict(
    stage=stage,
    num_classes=int(ctx.info.num_classes),
    image_shape=list(ctx.info.image_shape),
    model=model,
  )


def fit(
  ctx: Context,
  stage: str,
  state,
  step,
  *,
  total_steps: int,
  data_seed: int,
  sampler: str,
  samples_per_class: int = 4,
  fingerprint_extra: dict | None = None,
  advice: str,
):
  """Trains a stage of the backbone model through the shared loop."""
  stage_config = ctx.config[stage]

  def batches(start):
    return ctx.dataset.train_batches(
      global_batch_size=stage_config.batch_size,
      sharding=parallel.batch_sharding(ctx.mesh),
      seed=data_seed,
      start_step=start,
      sampler=sampler,
      samples_per_class=samples_per_class,
    )

  logging.info(
    '%s: %d steps, batch %d on %d devices.',
    stage,
    total_steps,
    stage_config.batch_size,
    ctx.mesh.devices.size,
  )
  ckpt = checkpoints.StageCheckpoints(
    ctx.stage_dir(stage) / 'checkpoints',
    dict(fingerprint(ctx, stage), **(fingerprint_extra or {})),
  )
  select = None
  if best_on_val.enabled(ctx):
    select = best_on_val.BestOnVal(
      ctx, stage, state, fingerprint(ctx, stage), predict
    )
  try:
    return loop.fit(
      state,
      name=stage,
      step_fn=step,
      batches=batches,
      total_steps=total_steps,
      checkpoints=ckpt,
      workdir=ctx.stage_dir(stage),
      log_every=ctx.config.log_every,
      checkpoint_every=ctx.config.checkpoint_every,
      advice=advice,
      evaluate_every=(
        ctx.config.eval.val_every
        or schedule_length(stage_config, ctx.info, sampler)[0]
      ),
      evaluate_fn=select,
      hooks=ctx.hooks,
      batch_size=stage_config.batch_size,
    )
  finally:
    if select is not None:
      select.close()


def predict(ctx: Context, state, split: str) -> dict:
  """Logits, pooled features, labels (and latent usage) over a split."""
  return predict_lib.predict(
    state,
    ctx.dataset.eval_batches(
      split,
      global_batch_size=ctx.config.eval.batch_size,
      sharding=parallel.batch_sharding(ctx.mesh),
    ),
    mesh=ctx.mesh,
  )


def evaluate(
  ctx: Context, state, stage: str, extra: dict | None = None
) -> dict:
  """Test metrics of a trained stage (its final step, and where the stage
  kept one, its best-on-validation parameters, with the eval.select_metric
  that chose them and their validation score by it); writes its report
  and plots (of the final step)."""
  pred = predict(ctx, state, 'test')
  extra = dict(extra or {})  # e.g. stage 2's method
  best = (
    best_on_val.load(ctx, stage, state, fingerprint(ctx, stage))
    if best_on_val.enabled(ctx)
    else None
  )
  if best is not None:
    best_state, step, val_score = best
    best_pred = predict(ctx, best_state, 'test')
    m = report.compute_metrics(
      best_pred['logits'], best_pred['labels'], ctx.info, ctx.config.eval
    )
    metric = ctx.config.eval.select_metric
    extra.update(
      top1_best_val=m['top1'],
      select_metric=metric,
      best_on_val={
        'step': step,
        'select_metric': metric,
        f'val_{metrics.SELECT_SCORES[metric]}': val_score,
        **{
          k: m[k]
          for k in ('top1', 'many', 'medium', 'few', 'ece', 'mce', 'nll')
        },
      },
    )
  return report.write_stage_report(
    ctx.stage_dir(stage),
    stage=stage,
    outputs=pred['logits'],
    labels=pred['labels'],
    info=ctx.info,
    eval_config=ctx.config.eval,
    latent_usage=pred.get('latent_usage'),
    extra=extra,
  )
