"""Stage 1: LCReg on a MiSLAS mixup backbone (DESIGN §3, §5).

Also holds what both training stages share: the train state, the loop with
checkpoints, logging and the non-finite guard, and the evaluation pass.
"""

import functools
import os
from typing import Any, Callable, Iterable

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import flax
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lcreg_jax import checkpoints
from lcreg_jax import covariance
from lcreg_jax import errors
from lcreg_jax import evaluate
from lcreg_jax import losses
from lcreg_jax import parallel
from lcreg_jax.data import pipeline
from lcreg_jax.models import network


class TrainState(train_state.TrainState):
  batch_stats: Any
  cov: Any  # covariance.CovarianceState of the latents, or {} without them


@flax.struct.dataclass
class Stage1Hparams:
  """Static hyper-parameters of the stage-1 step (hashable for jit)."""
  alpha: float
  beta: float
  gamma: float
  mixup_alpha: float
  isda_lambda0: float
  total_steps: int
  recon_normalize: bool
  recon_temperature: float
  explicit_latent_aug: bool


def num_steps(stage_config, num_examples: int) -> tuple[int, int]:
  """(steps per epoch, total steps); `steps` > 0 overrides `epochs`."""
  spe = pipeline.steps_per_epoch(num_examples, stage_config.batch_size)
  total = stage_config.steps or int(round(stage_config.epochs * spe))
  return spe, max(total, 1)


def stage1_schedule(cfg, steps_per_epoch: int, total_steps: int):
  """MiSLAS stage-1 learning rate: linear warm-up, then step or cosine."""
  warmup = int(cfg.warmup_epochs * steps_per_epoch)
  if cfg.schedule == 'step':
    main = optax.piecewise_constant_schedule(
        cfg.lr, {int(e * steps_per_epoch) - warmup: cfg.decay_factor
                 for e in cfg.decay_epochs})
  elif cfg.schedule == 'cosine':
    main = optax.cosine_decay_schedule(cfg.lr, max(total_steps - warmup, 1))
  else:
    raise errors.ConfigError(f'Unknown stage1.schedule {cfg.schedule!r}; use '
                             "'step' or 'cosine'.")
  if not warmup:
    return main
  # MiSLAS warms up per iteration: lr · (1 + t) / warmup_steps.
  warm = optax.linear_schedule(cfg.lr / warmup, cfg.lr, warmup - 1)
  return optax.join_schedules([warm, main], [warmup])


def sgd(schedule, momentum: float, weight_decay: float):
  """torch-style SGD: decay added to the gradient before momentum."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(schedule, momentum=momentum))


def init_variables(model, rng, image_shape):
  dummy = jnp.zeros((1, *image_shape), jnp.float32)
  return model.init({'params': rng}, dummy, train=False)


def create_train_state(model, rng, image_shape, tx, model_config=None):
  variables = init_variables(model, rng, image_shape)
  cov = {}
  if model.latent is not None:
    d = variables['params']['head']['fc']['kernel'].shape[0]
    cov = covariance.init_covariance(
        model.latent.num_latents, d,
        diagonal=model_config.latent.covariance == 'diagonal')
  return TrainState.create(apply_fn=model.apply, params=variables['params'],
                           batch_stats=variables.get('batch_stats', {}),
                           tx=tx, cov=cov)


def all_finite(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves]))


def sample_latent_noise(rng, cov_state, lam, batch: int):
  """ε ~ N(0, λ Σ_m) per image and latent, for the explicit variant."""
  m, d = cov_state.mean.shape
  n = jax.random.normal(rng, (batch, m, d))
  if cov_state.cov.ndim == 2:
    return n * jnp.sqrt(lam * cov_state.cov)[None]
  chol = jnp.linalg.cholesky(lam * cov_state.cov + 1e-5 * jnp.eye(d))
  return jnp.einsum('mde,bme->bmd', chol, n)


def train_step(state: TrainState, batch, rng, *, hp: Stage1Hparams):
  """One stage-1 step: L = α L_aug + β L_recon + γ L_cls (eq. 7)."""
  rng = jax.random.fold_in(rng, state.step)
  mix_rng, perm_rng, noise_rng = jax.random.split(rng, 3)
  images, labels = batch['image'], batch['label']
  bsz = images.shape[0]
  if hp.mixup_alpha > 0:
    lam_mix = jax.random.beta(mix_rng, hp.mixup_alpha, hp.mixup_alpha)
  else:
    lam_mix = jnp.float32(1.0)
  perm = jax.random.permutation(perm_rng, bsz)
  mixed = lam_mix * images + (1 - lam_mix) * images[perm]
  isda_lam = hp.isda_lambda0 * state.step / hp.total_steps
  has_latent = isinstance(state.cov, covariance.CovarianceState)

  def loss_fn(params):
    noise = None
    if has_latent and hp.explicit_latent_aug:
      noise = sample_latent_noise(noise_rng, state.cov, isda_lam, bsz)
    out, mutated = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, mixed,
        train=True, latent_noise=noise, mutable=['batch_stats'])
    cls = losses.mixup_cross_entropy(out['logits'], labels, labels[perm],
                                     lam_mix)
    aux = dict(cls_loss=cls, batch_stats=mutated['batch_stats'],
               cov=state.cov)
    loss = hp.gamma * cls
    if has_latent:
      samples = out['latent_samples']                    # (B, M, D)
      aux['cov'] = covariance.update_covariance_grouped(state.cov, samples)
      # Python-level branches: with α = β = 0 the traced step is exactly
      # the plain MiSLAS step (no zero-weighted terms in the graph).
      if hp.beta:
        rec = losses.reconstruction_loss(out['feature_map'],
                                         out['reconstruction'],
                                         hp.recon_normalize,
                                         hp.recon_temperature)
        aux['recon_loss'] = rec
        loss += hp.beta * rec
      if hp.alpha:
        m = samples.shape[1]
        g = out['latent_logits'].reshape(bsz * m, m)
        latent_labels = jnp.tile(jnp.arange(m), bsz)
        if not hp.explicit_latent_aug:
          kernel = params['latent']['latent_classifier']['kernel']
          g = losses.isda_augmented_logits(g, kernel, aux['cov'].cov,
                                           latent_labels, isda_lam)
        aug = losses.cross_entropy(g, latent_labels)
        aux['aug_loss'] = aug
        loss += hp.alpha * aug
    acc = (out['logits'].argmax(-1) == labels).mean()
    acc_p = (out['logits'].argmax(-1) == labels[perm]).mean()
    aux['accuracy'] = lam_mix * acc + (1 - lam_mix) * acc_p
    return loss, aux

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=aux.pop('batch_stats'),
                                cov=aux.pop('cov'))
  metrics = dict(loss=loss, grad_norm=optax.tree.norm(grads),
                 params_finite=all_finite(state.params), **aux)
  return state, metrics


def compile_step(step_fn, mesh, state, with_rng: bool = True):
  """jit over the mesh: state replicated and donated, batch sharded."""
  rep = parallel.replicated(mesh)
  state_sh = jax.tree.map(lambda _: rep, state)
  in_sh = (state_sh, parallel.batch_sharding(mesh)) + ((rep,) if with_rng
                                                       else ())
  return jax.jit(step_fn, in_shardings=in_sh, out_shardings=(state_sh, rep),
                 donate_argnums=(0,))


def _check_finite(metrics: dict, step: int, stage: str, ckpt_dir: str,
                  last_saved):
  bad = {k: float(v) for k, v in metrics.items()
         if k != 'params_finite' and not np.isfinite(v)}
  if bad or not metrics.get('params_finite', True):
    saved = (f'the last good checkpoint (step {last_saved}) in {ckpt_dir} is '
             'untouched' if last_saved else 'no checkpoint was written')
    raise errors.NonFiniteLossError(
        f'{stage}: the loss or parameters became NaN/infinite at step {step} '
        f'(non-finite: {bad or "parameters"}); training stopped and {saved}. '
        f'Lower the learning rate (--config.{stage}.lr), check that the '
        'inputs are normalised, or for LCReg try '
        '--config.model.latent.recon_normalize=True.')


def fit(state, *, step_fn: Callable, make_iterator: Callable[[int], Iterable],
        total_steps: int, ckpt: checkpoints.StageCheckpoints, workdir: str,
        stage: str, log_every: int, checkpoint_every: int,
        hooks: Iterable[Callable] = ()):
  """The loop both stages share: resume, step, log, guard, checkpoint."""
  start = ckpt.latest_step() or 0
  if start:
    state = ckpt.restore(state)
    logging.info('%s: resumed from step %d of %d (%s).', stage, start,
                 total_steps, ckpt.directory)
  if start >= total_steps:
    ckpt.close()
    return state
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  progress = periodic_actions.ReportProgress(num_train_steps=total_steps,
                                             writer=writer)
  data = iter(make_iterator(start))
  pending, last_saved = [], start or None
  try:
    for step in range(start + 1, total_steps + 1):
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, metrics = step_fn(state, next(data))
      pending.append(metrics)
      progress(step)
      save = step % checkpoint_every == 0 or step == total_steps
      if save or step % log_every == 0:
        host = jax.device_get(pending)
        pending = []
        for i, m in enumerate(host):
          _check_finite(m, step - len(host) + 1 + i, stage, ckpt.directory,
                        last_saved)
        summary = {k: float(np.mean([m[k] for m in host])) for k in host[0]
                   if k != 'params_finite'}
        writer.write_scalars(step, summary)
      if save:
        ckpt.save(step, state)
        last_saved = step
      for hook in hooks:
        hook(stage, step, state)
  finally:
    ckpt.close()
    writer.flush()
  return state


def make_eval_step(mesh, state):
  def eval_step(params, batch_stats, batch):
    out = state.apply_fn({'params': params, 'batch_stats': batch_stats},
                         batch['image'], train=False)
    res = dict(logits=out['logits'], features=out['features'])
    if 'assignment' in out:
      m = out['assignment'].shape[-1]
      hits = jax.nn.one_hot(out['assignment'].argmax(-1), m)   # (B, P, M)
      res['latent_usage'] = (hits.sum(1) * batch['mask'][:, None]).sum(0)
    return res
  rep = parallel.replicated(mesh)
  return jax.jit(eval_step, in_shardings=(rep, rep,
                                          parallel.batch_sharding(mesh)))


def predict(state, split, *, mesh, batch_size, mean, std):
  """Logits, pooled features and latent usage over a split, each once."""
  step = make_eval_step(mesh, state)
  outs = []
  for batch in pipeline.make_eval_iterator(
      split.images, split.labels, global_batch_size=batch_size,
      sharding=parallel.batch_sharding(mesh), mean=mean, std=std):
    res = step(state.params, state.batch_stats, batch)
    res['mask'] = batch['mask']
    outs.append(parallel.to_host(res))
  mask = np.concatenate([o['mask'] for o in outs]) > 0
  result = {k: np.concatenate([o[k] for o in outs])[mask]
            for k in ('logits', 'features')}
  if 'latent_usage' in outs[0]:
    result['latent_usage'] = np.sum([o['latent_usage'] for o in outs], 0)
  return result


def evaluate_and_report(state, dataset, config, *, mesh, norm, stage_dir,
                        stage: str) -> dict:
  """Evaluates on the test split and writes report.json and plots."""
  pred = predict(state, dataset.test, mesh=mesh,
                 batch_size=config.eval.batch_size, mean=norm[0], std=norm[1])
  metrics = evaluate.compute_metrics(
      pred['logits'], dataset.test.labels, dataset.class_counts,
      many_threshold=config.eval.many_threshold,
      few_threshold=config.eval.few_threshold, num_bins=config.eval.num_bins)
  metrics['stage'] = stage
  if 'latent_usage' in pred:
    metrics['latent_usage'] = [int(x) for x in pred['latent_usage']]
  if jax.process_index() == 0:
    evaluate.write_report(os.path.join(stage_dir, 'report.json'), metrics)
    if config.eval.plots:
      probs = jax.nn.softmax(pred['logits'])
      evaluate.save_plots(os.path.join(stage_dir, 'plots'), np.asarray(probs),
                          dataset.test.labels, dataset.class_counts,
                          pred.get('latent_usage'), config.eval.num_bins)
  return metrics


def fingerprint(config, stage: str, num_classes: int, image_shape) -> dict:
  return dict(stage=stage, num_classes=int(num_classes),
              image_shape=list(image_shape), model=config.model.to_dict())


def train_stage1(config, dataset, workdir: str, mesh, norm, hooks=()):
  """Trains stage 1 (resuming if possible) and returns its final state."""
  cfg = config.stage1
  parallel.check_batch_size(cfg.batch_size, mesh, 'stage1.batch_size')
  model = network.make_model(config.model, dataset.num_classes)
  image_shape = dataset.train.images.shape[1:]
  spe, total = num_steps(cfg, len(dataset.train.labels))
  tx = sgd(stage1_schedule(cfg, spe, total), cfg.momentum, cfg.weight_decay)
  rng = jax.random.key(config.seed)
  state = create_train_state(model, rng, image_shape, tx, config.model)
  state = parallel.replicate(state, mesh)
  hp = Stage1Hparams(
      alpha=cfg.alpha if config.model.latent.enabled else 0.0,
      beta=cfg.beta if config.model.latent.enabled else 0.0,
      gamma=cfg.gamma, mixup_alpha=cfg.mixup_alpha,
      isda_lambda0=cfg.isda_lambda0, total_steps=total,
      recon_normalize=config.model.latent.recon_normalize,
      recon_temperature=config.model.latent.recon_temperature,
      explicit_latent_aug=config.model.latent.explicit_latent_aug)
  step = compile_step(functools.partial(train_step, hp=hp), mesh, state)
  step_rng = parallel.replicate(jax.random.fold_in(rng, 1), mesh)
  stage_dir = os.path.join(workdir, 'stage1')
  ckpt = checkpoints.StageCheckpoints(
      os.path.join(stage_dir, 'checkpoints'),
      fingerprint(config, 'stage1', dataset.num_classes, image_shape))

  def make_iterator(start):
    return pipeline.make_train_iterator(
        dataset.train.images, dataset.train.labels,
        global_batch_size=cfg.batch_size,
        sharding=parallel.batch_sharding(mesh), seed=config.seed,
        start_step=start, augment=config.data.augment, pad=config.data.pad,
        sampler='shuffle', mean=norm[0], std=norm[1])

  logging.info('stage1: %d steps (%d per epoch), batch %d on %d devices.',
               total, spe, cfg.batch_size, mesh.devices.size)
  return fit(state, step_fn=lambda s, b: step(s, b, step_rng),
             make_iterator=make_iterator, total_steps=total, ckpt=ckpt,
             workdir=stage_dir, stage='stage1', log_every=config.log_every,
             checkpoint_every=config.checkpoint_every, hooks=hooks)
