"""Stage 2: MiSLAS classifier retraining on a frozen trunk (DESIGN §4).

The stage-1 classifier is fine-tuned with a learnable per-class scale (LWS),
class-balanced sampling and label-aware smoothing; with shift learning on
BatchNorm the running statistics are re-estimated on the balanced batches
while every BatchNorm scale and offset stays frozen.
"""

import functools
import os

from absl import logging
import flax
import jax
import jax.numpy as jnp
import optax

from lcreg_jax import checkpoints
from lcreg_jax import errors
from lcreg_jax import losses
from lcreg_jax import parallel
from lcreg_jax import train
from lcreg_jax.data import pipeline
from lcreg_jax.models import network

# The table of DESIGN §4: (ε_1, ε_K, shift BN, lr_factor) per data set and IF.
STAGE2_PRESETS = {
    ('cifar10', 100): (0.3, 0.0, False, 0.5),
    ('cifar10', 50): (0.2, 0.0, False, 0.2),
    ('cifar10', 10): (0.1, 0.0, False, 0.2),
    ('cifar100', 100): (0.4, 0.1, True, 0.2),
    ('cifar100', 50): (0.3, 0.0, True, 0.1),
    ('cifar100', 10): (0.2, 0.0, True, 0.1),
    ('imagenet_lt', None): (0.3, 0.0, True, 0.05),
    ('inat2018', None): (0.3, 0.0, True, 0.05),
    ('places_lt', None): (0.4, 0.1, True, 0.05),
}


def stage2_settings(cfg, imbalance_factor: float) -> dict:
  """Resolves `preset` + IF into LAS/shift-BN/lr-factor values.

  Explicit values in the config (≥ 0 for floats, 0/1 for shift_bn) win over
  the preset, so ablations stay one override away.
  """
  key = (cfg.preset, None)
  if (cfg.preset, int(round(imbalance_factor))) in STAGE2_PRESETS:
    key = (cfg.preset, int(round(imbalance_factor)))
  if key not in STAGE2_PRESETS:
    known = sorted({p for p, _ in STAGE2_PRESETS})
    raise errors.ConfigError(
        f'No stage-2 preset for stage2.preset={cfg.preset!r} at imbalance '
        f'factor {imbalance_factor}; presets exist for {known} (CIFAR at IF '
        '10/50/100). Set stage2.las_head, las_tail, shift_bn and lr_factor '
        'explicitly, or choose a preset.')
  head, tail, shift, factor = STAGE2_PRESETS[key]
  return dict(
      las_head=cfg.las_head if cfg.las_head >= 0 else head,
      las_tail=cfg.las_tail if cfg.las_tail >= 0 else tail,
      shift_bn=bool(cfg.shift_bn) if cfg.shift_bn >= 0 else shift,
      lr_factor=cfg.lr_factor if cfg.lr_factor >= 0 else factor)


def param_labels(params):
  """'classifier' for the head's Dense, 'scale' for LWS, 'frozen' else."""
  flat = flax.traverse_util.flatten_dict(params)
  labels = {}
  for path in flat:
    if path[0] == 'head' and path[-1] == 'scale':
      labels[path] = 'scale'
    elif path[0] == 'head':
      labels[path] = 'classifier'
    else:
      labels[path] = 'frozen'
  return flax.traverse_util.unflatten_dict(labels)


def stage2_schedule(base_lr: float, steps_per_epoch: int, epochs: int):
  """lr(e) = lr/2 (1 + cos(π e / E)), constant within an epoch."""
  def schedule(step):
    e = jnp.floor(step / steps_per_epoch)
    return 0.5 * base_lr * (1 + jnp.cos(jnp.pi * e / epochs))
  return schedule


def stage2_optimizer(cfg, settings, steps_per_epoch: int, epochs: int):
  def opt(factor):
    return train.sgd(stage2_schedule(cfg.lr * factor, steps_per_epoch, epochs),
                     cfg.momentum, cfg.weight_decay)
  return optax.multi_transform(
      {'classifier': opt(settings['lr_factor']), 'scale': opt(1.0),
       'frozen': optax.set_to_zero()}, param_labels)


def retrain_step(state, batch, *, class_counts, las, shift_bn: bool):
  """One step of LAS on the LWS head.

  Only the head is differentiated: the frozen trunk needs its forward pass
  (and, with shift BN, its batch statistics) but no backward pass, which
  makes the step about three times cheaper than masking full gradients.
  """
  def loss_fn(head_params):
    variables = {'params': {**state.params, 'head': head_params},
                 'batch_stats': state.batch_stats}
    if shift_bn:
      out, mutated = state.apply_fn(variables, batch['image'], train=True,
                                    mutable=['batch_stats'])
      stats = mutated['batch_stats']
    else:
      out = state.apply_fn(variables, batch['image'], train=False)
      stats = state.batch_stats
    loss = losses.label_aware_smoothing(
        out['logits'], batch['label'], class_counts, las['las_head'],
        las['las_tail'], las['shape'], las['power'])
    acc = (out['logits'].argmax(-1) == batch['label']).mean()
    return loss, (stats, acc)

  (loss, (stats, acc)), head_grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params['head'])
  grads = {k: (head_grads if k == 'head' else jax.tree.map(jnp.zeros_like, v))
           for k, v in state.params.items()}
  state = state.apply_gradients(grads=grads, batch_stats=stats)
  return state, dict(loss=loss, accuracy=acc,
                     params_finite=train.all_finite(state.params))


def _merge_stage1(params2, params1):
  """Stage-2 params: stage-1 values wherever the paths exist (all but LWS)."""
  flat1 = flax.traverse_util.flatten_dict(params1)
  flat2 = flax.traverse_util.flatten_dict(params2)
  missing = [p for p in flat1 if p not in flat2]
  if missing:
    raise errors.CheckpointMismatchError(
        f'The stage-1 checkpoint has parameters this stage-2 model lacks '
        f'(e.g. {"/".join(missing[0])}); stage 2 must use the stage-1 '
        'model config.')
  return flax.traverse_util.unflatten_dict(
      {p: flat1.get(p, v) for p, v in flat2.items()})


def load_stage1(config, dataset, workdir, mesh):
  """The final stage-1 state, from `stage2.init_from` or workdir/stage1."""
  src = config.stage2.init_from or os.path.join(workdir, 'stage1',
                                                'checkpoints')
  image_shape = dataset.train.images.shape[1:]
  if not os.path.isdir(src):
    raise errors.CheckpointMismatchError(
        f'Stage 2 needs a stage-1 checkpoint but {src} does not exist. Run '
        'stage 1 first (--config.stage1.enabled=True) or point '
        '--config.stage2.init_from at a stage-1 checkpoints directory.')
  model = network.make_model(config.model, dataset.num_classes)
  # Same optimizer-state structure as stage 1 (values are irrelevant) so
  # that the whole stage-1 tree restores.
  tx = train.sgd(lambda _: 0.0, config.stage1.momentum,
                 config.stage1.weight_decay)
  template = train.create_train_state(model, jax.random.key(0), image_shape,
                                      tx, config.model)
  template = parallel.replicate(template, mesh)
  ckpt = checkpoints.StageCheckpoints(
      src, train.fingerprint(config, 'stage1', dataset.num_classes,
                             image_shape))
  if ckpt.latest_step() is None:
    raise errors.CheckpointMismatchError(
        f'{src} holds no finished stage-1 checkpoint; run stage 1 first.')
  try:
    state = ckpt.restore(template)
  finally:
    ckpt.close()
  return state


def train_stage2(config, dataset, workdir: str, mesh, norm, stage1_state,
                 hooks=()):
  cfg = config.stage2
  parallel.check_batch_size(cfg.batch_size, mesh, 'stage2.batch_size')
  settings = stage2_settings(cfg, config.data.imbalance_factor)
  model = network.make_model(config.model, dataset.num_classes, lws=True)
  image_shape = dataset.train.images.shape[1:]
  spe, total = train.num_steps(cfg, len(dataset.train.labels))
  epochs = max(int(round(total / spe)), 1)
  tx = stage2_optimizer(cfg, settings, spe, epochs)
  fresh = train.init_variables(model, jax.random.key(config.seed),
                               image_shape)
  params = _merge_stage1(fresh['params'], jax.device_get(stage1_state.params))
  state = train.TrainState.create(
      apply_fn=model.apply, params=params,
      batch_stats=jax.device_get(stage1_state.batch_stats), tx=tx, cov={})
  state = parallel.replicate(state, mesh)
  las = dict(las_head=settings['las_head'], las_tail=settings['las_tail'],
             shape=cfg.las_shape, power=cfg.las_power or None)
  step = train.compile_step(
      functools.partial(retrain_step, class_counts=dataset.class_counts,
                        las=las, shift_bn=settings['shift_bn']), mesh, state,
      with_rng=False)
  stage_dir = os.path.join(workdir, 'stage2')
  fp = train.fingerprint(config, 'stage2', dataset.num_classes, image_shape)
  fp['stage2_settings'] = settings
  ckpt = checkpoints.StageCheckpoints(os.path.join(stage_dir, 'checkpoints'),
                                      fp)

  def make_iterator(start):
    return pipeline.make_train_iterator(
        dataset.train.images, dataset.train.labels,
        global_batch_size=cfg.batch_size,
        sharding=parallel.batch_sharding(mesh), seed=config.seed + 1,
        start_step=start, augment=config.data.augment, pad=config.data.pad,
        sampler='class_balanced', samples_per_class=cfg.samples_per_class,
        mean=norm[0], std=norm[1])

  logging.info('stage2: %d steps, settings %s.', total, settings)
  return train.fit(state, step_fn=step, make_iterator=make_iterator,
                   total_steps=total, ckpt=ckpt, workdir=stage_dir,
                   stage='stage2', log_every=config.log_every,
                   checkpoint_every=config.checkpoint_every, hooks=hooks)
