"""Stage 2: MiSLAS classifier retraining on the frozen stage-1 model
(docs/method.md §4): LWS head, class-balanced sampling, label-aware smoothing,
shift-BN; or, by `stage2.method`, one of Kang et al.'s decoupled baselines
(docs/method.md §8): cRT, LWS, τ-normalisation, or post-hoc logit adjustment."""

import functools

from absl import logging
import flax
import jax

from lcreg_jax import checkpoints
from lcreg_jax import errors
from lcreg_jax import files
from lcreg_jax import optim
from lcreg_jax import parallel
from lcreg_jax import train_state
from lcreg_jax.config import presets
from lcreg_jax.config import validate
from lcreg_jax.evaluate import posthoc as posthoc_lib
from lcreg_jax.evaluate import report
from lcreg_jax.models import network
from lcreg_jax.stages import common
from lcreg_jax.steps import retrain

# MiSLAS, cRT and LWS retrain on class-balanced batches, an epoch of about
# N_train samples (samplers.class_balanced_steps_per_epoch).
SAMPLER = 'class_balanced'


def merge_stage1(params2, params1):
  """Stage-2 params: stage-1 values wherever the paths exist (all but LWS)."""
  flat1 = flax.traverse_util.flatten_dict(params1)
  flat2 = flax.traverse_util.flatten_dict(params2)
  missing = [p for p in flat1 if p not in flat2]
  if missing:
    raise errors.CheckpointError(
      f'The stage-1 checkpoint has parameters this stage-2 model lacks '
      f'(e.g. {"/".join(missing[0])}); stage 2 must use the stage-1 '
      'model config.'
    )
  return flax.traverse_util.unflatten_dict(
    {p: flat1.get(p, v) for p, v in flat2.items()}
  )


def load_stage1(ctx: common.Context):
  """The final stage-1 state, from `stage2.init_from` or workdir/stage1."""
  config = ctx.config
  own = ctx.stage_dir('stage1') / 'checkpoints'
  src = files.as_path(config.stage2.init_from or own)
  if not src.is_dir():
    raise errors.CheckpointError(
      f'Stage 2 and DLSA need a stage-1 checkpoint but {src} does not '
      'exist. Run stage 1 first (--config.stage1.enabled=True) or point '
      '--config.stage2.init_from at a stage-1 checkpoints directory.'
    )
  model = network.make_model(config.model, ctx.info.num_classes)
  # Same optimizer-state structure as stage 1 (values are irrelevant) so
  # that the whole stage-1 tree restores.
  tx = optim.stage1_optimizer(config, lambda _: 0.0)
  template = train_state.create_train_state(
    model, jax.random.key(0), ctx.info.image_shape, tx, config.model
  )
  # Stage 1's layout, so that the moments restore without a gather.
  template = parallel.place(template, ctx.mesh, config.shard_covariance)
  ckpt = checkpoints.StageCheckpoints(
    src, common.fingerprint(ctx, 'stage1'), read_only=True
  )
  try:
    step, state = ckpt.restore_latest(template)
  finally:
    ckpt.close()
  if not step:
    raise errors.CheckpointError(
      f'{src} holds no stage-1 checkpoint; run stage 1 first '
      '(--config.stage1.enabled=True).'
    )
  _, total = common.schedule_length(config.stage1, ctx.info)
  if step < total:
    if src == own:
      raise errors.CheckpointError(
        f'Stage 1 in {src} stopped at step {step} of {total}; finish it '
        'first by rerunning with --config.stage1.enabled=True (it resumes '
        'from there).'
      )
    logging.warning(
      'Stage-1 checkpoint %s is at step %d, fewer than the %d '
      'steps this config schedules; using it as it is.',
      src,
      step,
      total,
    )
  return state


def initial_model(config, num_classes: int, image_shape, stage1_params):
  """The stage-2 model and its parameters at step 0.

  mislas and lws put the LWS scale (init 1) on the stage-1 classifier; crt
  replaces the classifier by a fresh linear one, initialised from the seed.
  Everything else is stage 1's.
  """
  crt = config.stage2.method == 'crt'
  model = network.make_model(config.model, num_classes, lws=not crt)
  fresh = train_state.init_variables(
    model, jax.random.key(config.seed), image_shape
  )
  params = merge_stage1(fresh['params'], jax.device_get(stage1_params))
  if crt:
    params = dict(params, head=fresh['params']['head'])
  return model, params


def make_state(config, info, model, params, batch_stats):
  """The stage-2 train state at step 0 (its optimiser sized to the data)."""
  spe, total = common.schedule_length(config.stage2, info, SAMPLER)
  epochs = max(int(round(total / spe)), 1)
  tx = optim.stage2_optimizer(config.stage2, spe, epochs)
  return train_state.TrainState.create(
    apply_fn=model.apply, params=params, batch_stats=batch_stats, tx=tx, cov={}
  )


def make_step(config, info, mesh, state):
  """The jitted stage-2 step for `state` (arrays or shapes) on `mesh`;
  training and `lcreg_jax.aot` both build it here."""
  hp = retrain.RetrainHparams.from_config(config.stage2, info.class_counts)
  return parallel.jit_step(
    functools.partial(retrain.retrain_step, hp=hp), mesh, state
  )


def fingerprint_settings(cfg) -> dict:
  """What of the resolved `config.stage2` a stage-2 checkpoint is for (keys
  added later: checkpoints.FINGERPRINT_KEYS_ADDED)."""
  fields = presets.STAGE2_FIELDS + ('method', 'epoch_length')
  return {f: cfg[f] for f in fields}


def train(ctx: common.Context, stage1_state):
  """Retrains the classifier on the frozen stage-1 model; the final state."""
  config = ctx.config
  cfg = config.stage2
  model, params = initial_model(
    config, ctx.info.num_classes, ctx.info.image_shape, stage1_state.params
  )
  _, total = common.schedule_length(cfg, ctx.info, SAMPLER)
  state = make_state(
    config, ctx.info, model, params, jax.device_get(stage1_state.batch_stats)
  )
  state = parallel.replicate(state, ctx.mesh)
  step = make_step(config, ctx.info, ctx.mesh, state)
  settings = fingerprint_settings(cfg)
  logging.info('stage2: settings %s.', settings)
  return common.fit(
    ctx,
    'stage2',
    state,
    step,
    total_steps=total,
    data_seed=config.seed + 1,
    sampler=SAMPLER,
    samples_per_class=cfg.samples_per_class,
    fingerprint_extra=dict(stage2_settings=settings),
    advice='Lower the learning rate (--config.stage2.lr).',
  )


def posthoc(ctx: common.Context, stage1_state) -> dict:
  """τ-normalisation or post-hoc logit adjustment of the stage-1 model.

  τ is chosen on the validation split only, by `eval.select_metric`; the
  test split is predicted after the choice and adjusted with that τ. The
  report records the metric, both validation scores at τ (`val_top1`,
  `val_class_mean_top1`) and their curves over the grid. Writes stage2's
  report. With several processes every one gets the whole split's outputs
  (`common.predict`) and makes the same choice.
  """
  cfg = ctx.config.stage2
  counts = ctx.info.class_counts
  kernel = jax.device_get(stage1_state.params['head']['fc']['kernel'])

  def adjust(pred, tau):
    if cfg.method == 'tau_norm':
      return posthoc_lib.tau_normalized_logits(pred['features'], kernel, tau)
    return posthoc_lib.logit_adjusted(pred['logits'], counts, tau)

  grid = posthoc_lib.tau_grid(cfg.tau_max, cfg.tau_step)
  val = common.predict(ctx, stage1_state, 'val')
  metric = ctx.config.eval.select_metric
  best, curves = posthoc_lib.choose_tau(
    lambda t: adjust(val, t), val['labels'], grid, ctx.info.num_classes, metric
  )
  tau = float(grid[best])
  at_tau = {f'val_{k}': float(c[best]) for k, c in curves.items()}
  logging.info(
    'stage2 (%s): tau %.3g chosen on validation by %s (%s).',
    cfg.method,
    tau,
    metric,
    at_tau,
  )
  test = common.predict(ctx, stage1_state, 'test')
  return report.write_stage_report(
    ctx.stage_dir('stage2'),
    stage='stage2',
    outputs=adjust(test, tau),
    labels=test['labels'],
    info=ctx.info,
    eval_config=ctx.config.eval,
    latent_usage=test.get('latent_usage'),
    extra=dict(
      method=cfg.method,
      tau=tau,
      select_metric=metric,
      **at_tau,
      tau_grid=grid.tolist(),
      **{f'val_{k}_by_tau': c.tolist() for k, c in curves.items()},
    ),
  )


def run(ctx: common.Context, stage1_state) -> dict:
  """Stage 2 by `stage2.method`; its test report (the method recorded)."""
  method = ctx.config.stage2.method
  if method in validate.POSTHOC_METHODS:
    return posthoc(ctx, stage1_state)
  state = train(ctx, stage1_state)
  return common.evaluate(ctx, state, 'stage2', extra=dict(method=method))
