"""The rules across config keys, each with its fix; the checks of single
keys are declared with the keys (base.py, dlsa.py, via schema.py).

They read only the config (and, for the backbone's block count, the
backbone table of models/resnet.py); config/validate.py runs them all
before any data is read and reports every problem together.
"""

import os

from lcreg_jax.config import presets
from lcreg_jax.config.schema import is_int
from lcreg_jax.config.schema import is_num
from lcreg_jax.models import resnet


def _data_problems(data) -> list[str]:
  """The data section's cross-checks (streamed list files vs in memory)."""
  problems = []
  lists = [
    k for k in ('image_root', 'train_list', 'val_list', 'test_list') if data[k]
  ]
  if data.source == 'list':
    missing = [k for k in ('train_list', 'test_list') if not data[k]]
    if missing:
      problems.append(
        f'data.source=list needs data.{" and data.".join(missing)}'
      )
  elif data.source == 'tfds_stream':
    if data.image_root:
      problems.append(
        'data.image_root is set but data.source=tfds_stream reads '
        'the images from the TFDS build; leave it empty'
      )
    if data.val_list and not data.tfds_val_split:
      problems.append(
        'data.val_list is set but data.tfds_val_split is empty: '
        'name the build split the list picks its images from'
      )
  elif lists:
    problems.append(
      f'data.{", data.".join(lists)} set but data.source='
      f'{data.source!r}; set data.source=list to read list files'
    )
  if data.source in ('tfds', 'tfds_stream'):
    missing = [
      k
      for k in ('tfds_name', 'tfds_train_split', 'tfds_test_split')
      if not data[k]
    ]
    if missing:
      problems.append(
        f'data.source={data.source} needs data.{" and data.".join(missing)}'
      )
  if data.augment == 'imagenet':
    if data.source not in ('list', 'tfds_stream'):
      problems.append(
        'data.augment=imagenet decodes image files: it needs '
        'data.source=list or tfds_stream'
      )
    if data.channels != 3:
      problems.append(
        'data.augment=imagenet makes RGB images: data.channels must be 3'
      )
    if (
      is_int(data.eval_resize)
      and is_int(data.image_size)
      and data.eval_resize < data.image_size
    ):
      problems.append(
        f'data.eval_resize={data.eval_resize} is smaller than '
        f'data.image_size={data.image_size}, the centre crop'
      )
  return problems


POSTHOC_METHODS = ('tau_norm', 'posthoc_la')


def has_val_split(data) -> bool:
  """Whether the data config gives a validation split (see data/dataset.py)."""
  return bool(
    (is_int(data.val_per_class) and data.val_per_class > 0)
    or (data.source == 'list' and data.val_list)
    or (data.source in ('tfds', 'tfds_stream') and data.tfds_val_split)
  )


def drw_problems(
  s1, steps_per_epoch: int | None = None, data_name: str = ''
) -> list[str]:
  """The one check that stage1.reweight=drw switches its weights on before
  stage 1 ends. Before the data is read (steps_per_epoch None) it compares
  epochs, and only when stage1.steps is unset; with the data's size it
  compares the steps the run will take."""
  if s1.reweight != 'drw':
    return []
  epochs, drw = s1.epochs, s1.drw_epoch
  if steps_per_epoch is None:
    if (
      s1.steps is not None
      or not (is_num(epochs) and is_num(drw))
      or (drw < epochs)
    ):
      return []
    return [
      f'stage1.reweight=drw switches the weights on at stage1.drw_epoch='
      f'{drw:g}, but stage 1 ends at epoch {epochs:g}, so they would never '
      f'be used: set stage1.drw_epoch below {epochs:g} (LDAM-DRW: 160 of '
      '200), or stage1.reweight=effective_number to weight from the start'
    ]
  spe = steps_per_epoch
  total = s1.steps or int(round(epochs * spe))
  switch = int(round(drw * spe))
  if switch < total:
    return []
  return [
    f'stage1.reweight=drw switches the weights on at step {switch} '
    f'(stage1.drw_epoch={drw:g} x {spe} steps per epoch of {data_name}), '
    f'but stage 1 has {total} steps, so they would never be used: set '
    f'stage1.drw_epoch below {total / spe:g}, or '
    'stage1.reweight=effective_number'
  ]


def _stage1_loss_problems(config, flat: dict) -> list[str]:
  """Cross-checks of the stage-1 loss, re-weighting and class-wise ISDA."""
  problems = drw_problems(config.stage1)
  isda = flat['model.class_isda']
  if flat['model.head'] == 'normed':
    if (
      flat['stage1.loss'] == 'ldam'
      and is_num(flat['stage1.ldam_scale'])
      and flat['stage1.ldam_scale'] != flat['model.normed_scale']
    ):
      problems.append(
        f'stage1.loss=ldam with model.head=normed scales the cosines by '
        f'stage1.ldam_scale={flat["stage1.ldam_scale"]:g} in training but '
        f'by model.normed_scale={flat["model.normed_scale"]:g} in '
        'evaluation: set both to the same s (LDAM-DRW: 30)'
      )
    if isda != 'none':
      problems.append(
        f'model.class_isda={isda} augments the logits of a linear head '
        '(w_c·a + b_c); the cosine head has no such form: set '
        'model.head=linear'
      )
    if config.stage2.enabled and flat['stage2.method'] == 'tau_norm':
      problems.append(
        'stage2.method=tau_norm rescales the classifier\'s columns by '
        '‖w_c‖^-τ, but model.head=normed already uses unit columns, so '
        'every τ gives the same classifier: use another stage2.method or '
        'model.head=linear'
      )
  if isda != 'none':
    if config.model.latent.enabled:
      problems.append(
        f'model.class_isda={isda} is the class-wise ISDA baseline on the '
        'pooled feature, which runs without the latent module: set '
        'model.latent.enabled=False (and model.classify_on=feature), or '
        'model.class_isda=none for LCReg'
      )
    if flat['stage1.loss'] != 'ce':
      problems.append(
        f'model.class_isda={isda} trains on ISDA\'s bound of the '
        f'cross-entropy, but stage1.loss={flat["stage1.loss"]!r}: set '
        'stage1.loss=ce (class weights via stage1.reweight still apply)'
      )
    if is_num(flat['stage1.mixup_alpha']) and flat['stage1.mixup_alpha'] > 0:
      problems.append(
        f'model.class_isda={isda} estimates each class\'s feature '
        'covariance from its images, and a mixed image belongs to no one '
        'class: set stage1.mixup_alpha=0'
      )
  return problems


def problems(config, flat: dict) -> list[str]:
  """Every rule across keys, each problem with its fix."""
  problems = []
  if (
    is_num(flat['eval.few_threshold'])
    and is_num(flat['eval.many_threshold'])
    and flat['eval.few_threshold'] > flat['eval.many_threshold']
  ):
    problems.append('eval.few_threshold must not exceed eval.many_threshold')
  problems += _data_problems(config.data)
  blocks = config.model.trainable_blocks
  if (
    is_int(blocks)
    and config.model.backbone in resnet.BACKBONES
    and blocks > len(resnet.block_names(config.model.backbone))
  ):
    problems.append(
      f'model.trainable_blocks={blocks} but {config.model.backbone} has '
      f'{len(resnet.block_names(config.model.backbone))} blocks'
    )
  weights = config.model.pretrained_weights
  if weights and not os.path.isfile(weights):
    problems.append(f'model.pretrained_weights={weights!r} is not a file')
  if not (
    config.stage1.enabled or config.stage2.enabled or config.dlsa.enabled
  ):
    problems.append(
      'stage1.enabled, stage2.enabled and dlsa.enabled are all '
      'False, so there is nothing to run'
    )
  warmup = flat['stage1.warmup_epochs']
  if (
    flat['stage1.warmup'] == 'per_epoch'
    and is_num(warmup)
    and warmup > 0
    and warmup != int(warmup)
  ):
    problems.append(
      f'stage1.warmup=per_epoch steps the lr once per epoch, so '
      f'stage1.warmup_epochs={warmup:g} must be a whole number; use '
      'stage1.warmup=per_iteration for a fractional warm-up'
    )
  if (
    config.stage2.enabled
    and flat['stage2.method'] in POSTHOC_METHODS
    and not has_val_split(config.data)
  ):
    problems.append(
      f'stage2.method={flat["stage2.method"]} chooses τ on a validation '
      'split (never on test), but the data has none: set '
      'data.val_per_class (e.g. 20: that many training images per class '
      'are held out), or data.val_list (source=list) / data.tfds_val_split '
      '(TFDS) to the data set\'s validation list'
    )
  problems += _stage1_loss_problems(config, flat)
  if flat['stage2.las_shape'] == 'exp' and flat['stage2.las_power'] is None:
    problems.append('stage2.las_shape=exp needs stage2.las_power (> 0)')
  if config.stage2.enabled and flat['stage2.preset'] in (
    presets.STAGE2_PRESET_NAMES
  ):
    row = presets.stage2_row(config.stage2.preset, config.data.imbalance_factor)
    unset = [f for f in presets.STAGE2_FIELDS if config.stage2[f] is None]
    if row is None and unset:
      problems.append(
        f'stage2.preset={config.stage2.preset!r} has no row for '
        f'data.imbalance_factor={config.data.imbalance_factor:g} (the CIFAR '
        f'presets have IF 10, 50 and 100); set stage2.{", stage2.".join(unset)}'
        ' explicitly or choose another preset'
      )
  return problems


def device_problems(config, flat: dict, num_visible_devices: int) -> list[str]:
  """The mesh's rules: batches and sharded moments split evenly over it."""
  problems = []
  devices = config.num_devices or num_visible_devices
  if is_int(devices):
    if devices > num_visible_devices:
      problems.append(
        f'num_devices={devices} but only {num_visible_devices} '
        'devices are visible (leave it unset to use them all)'
      )
    row = (
      presets.stage2_row(config.stage2.preset, config.data.imbalance_factor)
      if is_num(flat['data.imbalance_factor'])
      else None
    )
    for key in ('stage1.batch_size', 'stage2.batch_size', 'eval.batch_size'):
      value = flat[key]
      if value is None and key == 'stage2.batch_size' and row is not None:
        value = row['batch_size']
      if is_int(value) and value >= 1 and value % devices:
        source = '' if flat[key] is not None else ' (from the stage-2 preset)'
        problems.append(
          f'{key}={value}{source} is not divisible by the {devices} devices '
          f'of the mesh (use a multiple of {devices}, e.g. '
          f'{max(devices, value // devices * devices)})'
        )
    latent = config.model.latent
    if (
      config.shard_covariance
      and latent.enabled
      and is_int(latent.num_latents)
      and latent.num_latents % devices
    ):
      m = latent.num_latents
      problems.append(
        f'shard_covariance=True splits the latent moments along M over the '
        f'{devices} devices, but model.latent.num_latents={m} is not '
        f'divisible by {devices} (JAX shards evenly only); use a multiple '
        f'of {devices} (e.g. {max(devices, m // devices * devices)} or '
        f'{-(-m // devices) * devices}), or leave shard_covariance unset '
        'to replicate them'
      )
  return problems
