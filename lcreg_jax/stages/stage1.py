"""Stage 1: LCReg on a MiSLAS mixup backbone (docs/method.md §3, §5)."""

import functools

from absl import logging
import jax

from lcreg_jax import optim
from lcreg_jax import parallel
from lcreg_jax import train_state
from lcreg_jax.models import network
from lcreg_jax.models import pretrained
from lcreg_jax.stages import common
from lcreg_jax.steps import stage1 as stage1_step


def initial_state(config, info, tx):
  """The state stage 1 starts from: random, or with a pretrained backbone."""
  model = network.make_model(config.model, info.num_classes)
  state = train_state.create_train_state(
    model, jax.random.key(config.seed), info.image_shape, tx, config.model
  )
  weights = config.model.pretrained_weights
  if config.model.trainable_blocks is not None and not weights:
    logging.warning(
      'stage1: model.trainable_blocks=%d freezes a randomly '
      'initialised trunk; set model.pretrained_weights to start '
      'from trained weights.',
      config.model.trainable_blocks,
    )
  if weights:
    loaded = pretrained.load_torchvision_resnet(
      {'params': state.params, 'batch_stats': state.batch_stats},
      weights,
      dont_load=config.model.pretrained_dont_load,
    )
    logging.info('stage1: backbone initialised from %s.', weights)
    state = state.replace(
      params=loaded['params'], batch_stats=loaded['batch_stats']
    )
  return state


def log_covariance_layout(config, mesh):
  """Says where the latent moments live, and why a full covariance is
  replicated on a mesh of several devices."""
  latent, n = config.model.latent, mesh.size
  if not latent.enabled:
    return
  m = latent.num_latents
  if config.shard_covariance:
    logging.info(
      'stage1: latent moments split along M over %d devices '
      '(%d of the %d latents each).',
      n,
      m // n,
      m,
    )
  elif latent.covariance == 'full' and n > 1:
    why = (
      f'M = {m} is not divisible by the {n} devices and JAX shards '
      f'evenly only; model.latent.num_latents={-(-m // n) * n} (or '
      f'another multiple of {n}) would split it'
      if m % n
      else 'shard_covariance=False'
    )
    logging.warning(
      'stage1: the full M x D x D latent covariance is '
      'replicated on each of the %d devices (%s).',
      n,
      why,
    )


def optimizer(config, info):
  """Stage 1's optimiser, its schedule sized to the data set."""
  spe, total = common.schedule_length(config.stage1, info)
  return optim.stage1_optimizer(
    config, optim.stage1_schedule(config.stage1, spe, total)
  )


def make_step(config, info, mesh, state):
  """The jitted stage-1 step for `state` (arrays or shapes) on `mesh`.

  Training and `lcreg_jax.aot` both build it here, so what is compiled
  ahead of time is the step that trains.
  """
  spe, total = common.schedule_length(config.stage1, info)
  shard = config.shard_covariance
  hp = stage1_step.Stage1Hparams.from_config(
    config, total, spe, info.class_counts
  )
  return parallel.jit_step(
    functools.partial(
      stage1_step.train_step, hp=hp, cov_mesh=mesh if shard else None
    ),
    mesh,
    state,
    shard,
  )


def train(ctx: common.Context):
  """Trains stage 1 (resuming if possible) and returns its final state."""
  config = ctx.config
  _, total = common.schedule_length(config.stage1, ctx.info)
  tx = optimizer(config, ctx.info)
  log_covariance_layout(config, ctx.mesh)
  state = parallel.place(
    initial_state(config, ctx.info, tx), ctx.mesh, config.shard_covariance
  )
  step = make_step(config, ctx.info, ctx.mesh, state)
  return common.fit(
    ctx,
    'stage1',
    state,
    step,
    total_steps=total,
    data_seed=config.seed,
    sampler='shuffle',
    advice='Lower the learning rate (--config.stage1.lr), check that the '
    'inputs are normalised, or for LCReg try '
    '--config.model.latent.recon_normalize=True.',
  )
