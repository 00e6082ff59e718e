"""Optimisers and learning-rate schedules of both stages (docs/method.md §4, §5)."""

import flax
import jax.numpy as jnp
import optax

from lcreg_jax.models import resnet


def sgd(schedule, momentum: float, weight_decay: float):
  """torch-style SGD: decay added to the gradient before momentum."""
  return optax.chain(
    optax.add_decayed_weights(weight_decay),
    optax.sgd(schedule, momentum=momentum),
  )


def stage1_schedule(cfg, steps_per_epoch: int, total_steps: int):
  """Stage-1 learning rate: warm-up, then step or cosine decay.

  MiSLAS sets the lr once per epoch: lr·(e + 1)/W in warm-up epochs
  e = 0..W-1 (0.02, 0.04, ..., 0.1 for lr 0.1, W = 5), the step decays at
  epoch boundaries, and its cosine (ImageNet-LT, iNaturalist, Places-LT:
  no warm-up) is lr/2 (1 + cos(π e / E)) in epoch e of E
  (`cosine_update='per_epoch'`). `warmup='per_iteration'` ramps the lr
  linearly per step; `cosine_update='per_step'` decays it every step.
  """
  warmup = int(cfg.warmup_epochs * steps_per_epoch)
  if cfg.schedule == 'step':
    main = optax.piecewise_constant_schedule(
      cfg.lr,
      {
        int(e * steps_per_epoch) - warmup: cfg.decay_factor
        for e in cfg.decay_epochs
      },
    )
  elif cfg.cosine_update == 'per_epoch':  # schedule 'cosine' from here on
    # E counts the epochs after the warm-up; `stage1.steps` may make it a
    # fraction.
    epochs = max(total_steps - warmup, 1) / steps_per_epoch
    main = per_epoch_cosine(cfg.lr, steps_per_epoch, epochs)
  else:
    main = optax.cosine_decay_schedule(cfg.lr, max(total_steps - warmup, 1))
  if not warmup:
    return main
  if cfg.warmup == 'per_epoch':
    epochs = int(cfg.warmup_epochs)

    def warm(step):
      return cfg.lr * (jnp.floor(step / steps_per_epoch) + 1) / epochs
  else:  # per_iteration: lr · (1 + t) / warmup_steps
    warm = optax.linear_schedule(cfg.lr / warmup, cfg.lr, warmup - 1)
  return optax.join_schedules([warm, main], [warmup])


def stage1_optimizer(config, schedule):
  """Stage-1 SGD; with `model.trainable_blocks` the frozen part of the
  backbone gets no update at all (no weight decay, no momentum)."""
  s1 = config.stage1
  tx = sgd(schedule, s1.momentum, s1.weight_decay)
  k = config.model.trainable_blocks
  blocks = resnet.block_names(config.model.backbone)
  if k is None or k >= len(blocks):  # nothing is frozen (see resnet.ResNet)
    return tx
  trainable = set(blocks[-k:])

  def labels(params):
    flat = flax.traverse_util.flatten_dict(params)
    return flax.traverse_util.unflatten_dict(
      {
        p: 'frozen' if p[0] == 'backbone' and p[1] not in trainable else 'train'
        for p in flat
      }
    )

  return optax.multi_transform(
    {'train': tx, 'frozen': optax.set_to_zero()}, labels
  )


def per_epoch_cosine(base_lr: float, steps_per_epoch: int, epochs: float):
  """MiSLAS's cosine (stage 2, and stage 1's `cosine_update='per_epoch'`):
  lr(e) = lr/2 (1 + cos(π e / E)) in epoch e = 0, 1, ..., constant within
  it. (MiSLAS writes π as 3.1415926535, equal in float32.)"""

  def schedule(step):
    e = jnp.floor(step / steps_per_epoch)
    return 0.5 * base_lr * (1 + jnp.cos(jnp.pi * e / epochs))

  return schedule


def head_param_labels(params):
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


def stage2_optimizer(cfg, steps_per_epoch: int, epochs: int):
  """SGD on the head only: the classifier at lr × lr_factor, LWS at lr.

  `cfg` is the resolved `config.stage2` (lr_factor filled in from the preset).
  By `cfg.method`: crt trains its fresh classifier at lr (lr_factor is
  MiSLAS's damping of a fine-tuned one); lws keeps the classifier exactly
  as stage 1 left it (zero updates, no decay) and learns the scale only.
  """

  def opt(factor):
    return sgd(
      per_epoch_cosine(cfg.lr * factor, steps_per_epoch, epochs),
      cfg.momentum,
      cfg.weight_decay,
    )

  method = cfg.get('method', 'mislas')
  classifier = {'crt': lambda: opt(1.0), 'lws': optax.set_to_zero}.get(
    method, lambda: opt(cfg.lr_factor)
  )()
  return optax.multi_transform(
    {
      'classifier': classifier,
      'scale': opt(1.0),
      'frozen': optax.set_to_zero(),
    },
    head_param_labels,
  )
