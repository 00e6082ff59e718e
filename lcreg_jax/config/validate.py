"""`resolve_and_validate`: the one check of a config, before any work.

Every choice and every numeric range is checked here, before any data is read
or any step runs, and all problems are reported together. Placeholders
(`None` = "from the preset", "1/√D", "every device") are filled in once, so the
rest of the package reads plain values.
"""

import math
import os
from typing import Any, Callable
import weakref

import ml_collections

from lcreg_jax import errors
from lcreg_jax.config import base
from lcreg_jax.config import dlsa as dlsa_config
from lcreg_jax.config import presets
from lcreg_jax.data import samplers
from lcreg_jax.models import heads
from lcreg_jax.models import resnet

CHOICES = {
    'data.source': ('digits', 'idx', 'cifar10', 'cifar100', 'tfds', 'list',
                    'tfds_stream'),
    'data.augment': ('crop_flip', 'crop', 'flip', 'none', 'imagenet'),
    'data.on_bad_image': ('stop', 'skip'),
    'stage1.mixup_partners': ('global', 'per_device'),
    'stage1.warmup': ('per_epoch', 'per_iteration'),
    'model.backbone': tuple(sorted(resnet.BACKBONES)),
    'model.shortcut': ('A', 'B'),
    'model.dtype': ('float32', 'bfloat16'),
    'model.classify_on': ('sum', 'feature', 'reconstruction'),
    'model.latent.covariance': ('full', 'diagonal'),
    'model.class_isda': ('none', 'diagonal', 'full'),
    'model.head': heads.HEADS,
    'stage1.loss': ('ce', 'focal', 'ldam', 'balanced_softmax',
                    'logit_adjusted'),
    'stage1.reweight': ('none', 'effective_number', 'drw'),
    'stage1.schedule': ('step', 'cosine'),
    'stage2.preset': presets.STAGE2_PRESET_NAMES,
    'stage2.las_shape': ('concave', 'linear', 'convex', 'exp'),
    'stage2.method': ('mislas', 'crt', 'lws', 'tau_norm', 'posthoc_la'),
    'dlsa.purity_type': ('neg_ce', 'hinge_ce', 'overlap'),
    'dlsa.flow_schedule': ('cosine', 'constant'),
    'dlsa.flow_select_metric': ('authors', 'purity', 'heldout'),
    'dlsa.pair_sampling': ('class_uniform', 'sample_uniform'),
    'dlsa.nll_weight_norm': ('classes', 'samples'),
    'dlsa.cluster_prior_from': ('all', 'routed'),
    'dlsa.final_counts': ('full', 'remaining'),
    'dlsa.stage_prior_correction': ('off', 'on', 'val'),
}


def _int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _num(x) -> bool:
  return (isinstance(x, (int, float)) and not isinstance(x, bool)
          and math.isfinite(x))


# (predicate, what the value must be). `None` passes only where the key is a
# placeholder (checked separately).
_POSITIVE_INT = (lambda x: _int(x) and x >= 1, 'an integer >= 1')
_NONNEG_INT = (lambda x: _int(x) and x >= 0, 'an integer >= 0')
_POSITIVE = (lambda x: _num(x) and x > 0, 'a number > 0')
_NONNEG = (lambda x: _num(x) and x >= 0, 'a number >= 0')
_UNIT = (lambda x: _num(x) and 0 <= x <= 1, 'a number in [0, 1]')
_MOMENTUM = (lambda x: _num(x) and 0 <= x < 1, 'a number in [0, 1)')
_OPEN_UNIT = (lambda x: _num(x) and 0 < x < 1, 'a number in (0, 1)')
_FACTOR = (lambda x: _num(x) and 0 < x <= 1, 'a number in (0, 1]')
_AT_LEAST_ONE = (lambda x: _num(x) and x >= 1, 'a number >= 1 (1 = balanced)')
_AT_LEAST_TWO = (lambda x: _int(x) and x >= 2, 'an integer >= 2')
_EPOCH_LIST = (lambda x: isinstance(x, (tuple, list)) and all(
    _num(e) and e >= 0 for e in x) and list(x) == sorted(x),
               'an ascending list of epochs >= 0')

RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    'seed': _NONNEG_INT, 'num_devices': _POSITIVE_INT,
    'log_every': _POSITIVE_INT, 'checkpoint_every': _POSITIVE_INT,
    'data.num_classes': _AT_LEAST_TWO, 'data.image_size': _POSITIVE_INT,
    'data.channels': _POSITIVE_INT, 'data.imbalance_factor': _AT_LEAST_ONE,
    'data.eval_resize': _POSITIVE_INT,
    'data.lt_seed': _NONNEG_INT, 'data.digits_test_per_class': _POSITIVE_INT,
    'data.val_per_class': _NONNEG_INT, 'data.pad': _NONNEG_INT,
    'model.latent.num_latents': _POSITIVE_INT,
    'model.trainable_blocks': _POSITIVE_INT,
    'model.latent.similarity_scale': _POSITIVE,
    'model.latent.tau_assign': _POSITIVE,
    'model.latent.recon_temperature': _POSITIVE,
    'stage1.epochs': _POSITIVE, 'stage1.steps': _POSITIVE_INT,
    'stage1.batch_size': _POSITIVE_INT, 'stage1.lr': _POSITIVE,
    'stage1.momentum': _MOMENTUM, 'stage1.weight_decay': _NONNEG,
    'stage1.warmup_epochs': _NONNEG, 'stage1.decay_epochs': _EPOCH_LIST,
    'stage1.decay_factor': _FACTOR, 'stage1.mixup_alpha': _NONNEG,
    'stage1.alpha': _NONNEG, 'stage1.beta': _NONNEG, 'stage1.gamma': _NONNEG,
    'stage1.isda_lambda0': _NONNEG,
    'stage1.focal_gamma': _NONNEG, 'stage1.ldam_max_margin': _POSITIVE,
    'stage1.ldam_scale': _POSITIVE, 'model.normed_scale': _POSITIVE,
    'stage1.la_tau': (_num, 'a finite number (1 = the prior itself)'),
    'stage1.reweight_beta': _MOMENTUM, 'stage1.drw_epoch': _NONNEG,
    'stage2.epochs': _POSITIVE, 'stage2.steps': _POSITIVE_INT,
    'stage2.batch_size': _POSITIVE_INT, 'stage2.lr': _POSITIVE,
    'stage2.momentum': _MOMENTUM, 'stage2.weight_decay': _NONNEG,
    'stage2.samples_per_class': _POSITIVE_INT,
    'stage2.las_head': _UNIT, 'stage2.las_tail': _UNIT,
    'stage2.lr_factor': _NONNEG, 'stage2.las_power': _POSITIVE,
    'stage2.tau_max': _NONNEG, 'stage2.tau_step': _POSITIVE,
    'eval.batch_size': _POSITIVE_INT, 'eval.num_bins': _POSITIVE_INT,
    'eval.many_threshold': _NONNEG_INT, 'eval.few_threshold': _NONNEG_INT,
    'eval.val_every': _POSITIVE_INT,
    'dlsa.val_per_class': _NONNEG_INT, 'dlsa.seed': _NONNEG_INT,
    'dlsa.depth': _NONNEG_INT, 'dlsa.top_fraction': _OPEN_UNIT,
    'dlsa.num_blocks': _POSITIVE_INT, 'dlsa.hidden_dim': _POSITIVE_INT,
    'dlsa.bn_momentum': _MOMENTUM, 'dlsa.bn_eps': _POSITIVE,
    'dlsa.num_clusters': _POSITIVE_INT, 'dlsa.center_std': _POSITIVE,
    'dlsa.flow_lr': _POSITIVE, 'dlsa.flow_momentum': _MOMENTUM,
    'dlsa.flow_grad_clip': _POSITIVE, 'dlsa.flow_steps': _POSITIVE_INT,
    'dlsa.flow_batch_size': _POSITIVE_INT,
    'dlsa.nll_weight_power': _NONNEG, 'dlsa.purity_weight': _NONNEG,
    'dlsa.purity_margin': _NONNEG, 'dlsa.balance_weight': _NONNEG,
    'dlsa.ema_decay': _MOMENTUM, 'dlsa.classifier_steps': _POSITIVE_INT,
    'dlsa.classifier_lr': _POSITIVE, 'dlsa.classifier_weight_decay': _NONNEG,
    'dlsa.classifier_batch_size': _POSITIVE_INT,
    'dlsa.balanced_softmax_tiny': _POSITIVE, 'dlsa.eval_every': _POSITIVE_INT,
    'dlsa.eval_chunk': _POSITIVE_INT, 'dlsa.nll_weight': _NONNEG,
    'dlsa.select_min_purity': _UNIT, 'dlsa.select_min_size': _NONNEG_INT,
    'dlsa.select_cap_factor': _POSITIVE,
}


# Keys with a non-None default that may still be set to None.
NULLABLE_NON_PLACEHOLDERS = {'dlsa.flow_grad_clip'}


def flatten(config, prefix='') -> dict:
  """{'a.b.c': value} of a nested ConfigDict."""
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def _placeholders(config, prefix='') -> set[str]:
  """Keys of `config` whose default is None (typed placeholders)."""
  return {k for k, v in flatten(config, prefix).items() if v is None}


def _set(config, key: str, value):
  """config['a']['b'] = value for key 'a.b' (tests set keys by name)."""
  *parents, leaf = key.split('.')
  for p in parents:
    config = config[p]
  config[leaf] = value


def _data_problems(data) -> list[str]:
  """The data section's cross-checks (streamed list files vs in memory)."""
  problems = []
  lists = [k for k in ('image_root', 'train_list', 'val_list', 'test_list')
           if data[k]]
  if data.source == 'list':
    missing = [k for k in ('train_list', 'test_list') if not data[k]]
    if missing:
      problems.append(
          f'data.source=list needs data.{" and data.".join(missing)}')
  elif data.source == 'tfds_stream':
    if data.image_root:
      problems.append('data.image_root is set but data.source=tfds_stream reads '
                      'the images from the TFDS build; leave it empty')
    if data.val_list and not data.tfds_val_split:
      problems.append('data.val_list is set but data.tfds_val_split is empty: '
                      'name the build split the list picks its images from')
  elif lists:
    problems.append(f'data.{", data.".join(lists)} set but data.source='
                    f'{data.source!r}; set data.source=list to read list files')
  if data.source in ('tfds', 'tfds_stream'):
    missing = [k for k in ('tfds_name', 'tfds_train_split', 'tfds_test_split')
               if not data[k]]
    if missing:
      problems.append(f'data.source={data.source} needs data.'
                      f'{" and data.".join(missing)}')
  if data.augment == 'imagenet':
    if data.source not in ('list', 'tfds_stream'):
      problems.append('data.augment=imagenet decodes image files: it needs '
                      'data.source=list or tfds_stream')
    if data.channels != 3:
      problems.append('data.augment=imagenet makes RGB images: data.channels '
                      'must be 3')
    if (_int(data.eval_resize) and _int(data.image_size)
        and data.eval_resize < data.image_size):
      problems.append(f'data.eval_resize={data.eval_resize} is smaller than '
                      f'data.image_size={data.image_size}, the centre crop')
  return problems


POSTHOC_METHODS = ('tau_norm', 'posthoc_la')


def has_val_split(data) -> bool:
  """Whether the data config gives a validation split (see data/dataset.py)."""
  return bool((_int(data.val_per_class) and data.val_per_class > 0)
              or (data.source == 'list' and data.val_list)
              or (data.source in ('tfds', 'tfds_stream')
                  and data.tfds_val_split))


def drw_problems(s1, steps_per_epoch: int | None = None,
                 data_name: str = '') -> list[str]:
  """The one check that stage1.reweight=drw switches its weights on before
  stage 1 ends. Before the data is read (steps_per_epoch None) it compares
  epochs, and only when stage1.steps is unset; with the data's size it
  compares the steps the run will take."""
  if s1.reweight != 'drw':
    return []
  epochs, drw = s1.epochs, s1.drw_epoch
  if steps_per_epoch is None:
    if s1.steps is not None or not (_num(epochs) and _num(drw)) or (
        drw < epochs):
      return []
    return [
        f'stage1.reweight=drw switches the weights on at stage1.drw_epoch='
        f'{drw:g}, but stage 1 ends at epoch {epochs:g}, so they would never '
        f'be used: set stage1.drw_epoch below {epochs:g} (LDAM-DRW: 160 of '
        '200), or stage1.reweight=effective_number to weight from the start']
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
      'stage1.reweight=effective_number']


def _stage1_loss_problems(config, flat: dict) -> list[str]:
  """Cross-checks of the stage-1 loss, re-weighting and class-wise ISDA."""
  problems = drw_problems(config.stage1)
  isda = flat['model.class_isda']
  if flat['model.head'] == 'normed':
    if (flat['stage1.loss'] == 'ldam' and _num(flat['stage1.ldam_scale'])
        and flat['stage1.ldam_scale'] != flat['model.normed_scale']):
      problems.append(
          f'stage1.loss=ldam with model.head=normed scales the cosines by '
          f'stage1.ldam_scale={flat["stage1.ldam_scale"]:g} in training but '
          f'by model.normed_scale={flat["model.normed_scale"]:g} in '
          'evaluation: set both to the same s (LDAM-DRW: 30)')
    if isda != 'none':
      problems.append(
          f'model.class_isda={isda} augments the logits of a linear head '
          '(w_c·a + b_c); the cosine head has no such form: set '
          'model.head=linear')
    if config.stage2.enabled and flat['stage2.method'] == 'tau_norm':
      problems.append(
          'stage2.method=tau_norm rescales the classifier\'s columns by '
          '‖w_c‖^-τ, but model.head=normed already uses unit columns, so '
          'every τ gives the same classifier: use another stage2.method or '
          'model.head=linear')
  if isda != 'none':
    if config.model.latent.enabled:
      problems.append(
          f'model.class_isda={isda} is the class-wise ISDA baseline on the '
          'pooled feature, which runs without the latent module: set '
          'model.latent.enabled=False (and model.classify_on=feature), or '
          'model.class_isda=none for LCReg')
    if flat['stage1.loss'] != 'ce':
      problems.append(
          f'model.class_isda={isda} trains on ISDA\'s bound of the '
          f'cross-entropy, but stage1.loss={flat["stage1.loss"]!r}: set '
          'stage1.loss=ce (class weights via stage1.reweight still apply)')
    if _num(flat['stage1.mixup_alpha']) and flat['stage1.mixup_alpha'] > 0:
      problems.append(
          f'model.class_isda={isda} estimates each class\'s feature '
          'covariance from its images, and a mixed image belongs to no one '
          'class: set stage1.mixup_alpha=0')
  return problems


def _problems(config, flat: dict, optional: set[str]) -> list[str]:
  problems = []
  for key, choices in CHOICES.items():
    if flat[key] not in choices:
      problems.append(f'{key}={flat[key]!r} is not one of {", ".join(choices)}')
  for key, (ok, what) in RANGES.items():
    value = flat[key]
    if value is None and key in optional:
      continue
    if not ok(value):
      problems.append(f'{key}={value!r} must be {what}')
  if (_num(flat['eval.few_threshold']) and _num(flat['eval.many_threshold'])
      and flat['eval.few_threshold'] > flat['eval.many_threshold']):
    problems.append('eval.few_threshold must not exceed eval.many_threshold')
  problems += _data_problems(config.data)
  blocks = config.model.trainable_blocks
  if (_int(blocks) and config.model.backbone in resnet.BACKBONES
      and blocks > len(resnet.block_names(config.model.backbone))):
    problems.append(
        f'model.trainable_blocks={blocks} but {config.model.backbone} has '
        f'{len(resnet.block_names(config.model.backbone))} blocks')
  weights = config.model.pretrained_weights
  if weights and not os.path.isfile(weights):
    problems.append(f'model.pretrained_weights={weights!r} is not a file')
  if not (config.stage1.enabled or config.stage2.enabled
          or config.dlsa.enabled):
    problems.append('stage1.enabled, stage2.enabled and dlsa.enabled are all '
                    'False, so there is nothing to run')
  warmup = flat['stage1.warmup_epochs']
  if (flat['stage1.warmup'] == 'per_epoch' and _num(warmup) and warmup > 0
      and warmup != int(warmup)):
    problems.append(f'stage1.warmup=per_epoch steps the lr once per epoch, so '
                    f'stage1.warmup_epochs={warmup:g} must be a whole number; use '
                    'stage1.warmup=per_iteration for a fractional warm-up')
  if (config.stage2.enabled and flat['stage2.method'] in POSTHOC_METHODS
      and not has_val_split(config.data)):
    problems.append(
        f'stage2.method={flat["stage2.method"]} chooses τ on a validation '
        'split (never on test), but the data has none: set '
        'data.val_per_class (e.g. 20: that many training images per class '
        'are held out), or data.val_list (source=list) / data.tfds_val_split '
        '(TFDS) to the data set\'s validation list')
  problems += _stage1_loss_problems(config, flat)
  if flat['stage2.las_shape'] == 'exp' and flat['stage2.las_power'] is None:
    problems.append('stage2.las_shape=exp needs stage2.las_power (> 0)')
  if config.stage2.enabled and flat['stage2.preset'] in (
      presets.STAGE2_PRESET_NAMES):
    row = presets.stage2_row(config.stage2.preset, config.data.imbalance_factor)
    unset = [f for f in presets.STAGE2_FIELDS if config.stage2[f] is None]
    if row is None and unset:
      problems.append(
          f'stage2.preset={config.stage2.preset!r} has no row for '
          f'data.imbalance_factor={config.data.imbalance_factor:g} (the CIFAR '
          f'presets have IF 10, 50 and 100); set stage2.{", stage2.".join(unset)}'
          ' explicitly or choose another preset')
  return problems


def resolve_and_validate(config: ml_collections.ConfigDict,
                         num_visible_devices: int | None = None
                         ) -> ml_collections.ConfigDict:
  """Checks every key and value; returns a resolved, locked copy.

  Args:
    config: a config built from `base_config()` (with overrides applied).
    num_visible_devices: devices the mesh may use; default `jax.device_count()`.
  Raises:
    errors.ConfigError naming every problem at once.
  A config it returned, passed again unchanged, comes back as it is.
  """
  if _already_resolved(config):
    return config
  reference = base.base_config()
  flat, expected = flatten(config), flatten(reference)
  extra = sorted(set(flat) - set(expected))
  missing = sorted(set(expected) - set(flat))
  if extra or missing:
    parts = []
    if extra:
      parts.append(f'keys that no code reads: {", ".join(extra)}')
    if missing:
      parts.append(f'no value for: {", ".join(missing)}')
    raise errors.ConfigError(
        'the config does not match lcreg_jax.config.base_config() (' +
        '; '.join(parts) + '). Config files must start from base_config() '
        'and change values only; check the spelling of the keys.')
  problems = _problems(config, flat,
                      _placeholders(reference) | NULLABLE_NON_PLACEHOLDERS)
  if num_visible_devices is None:
    import jax  # pylint: disable=g-import-not-at-top
    num_visible_devices = jax.device_count()
  devices = config.num_devices or num_visible_devices
  if _int(devices):
    if devices > num_visible_devices:
      problems.append(f'num_devices={devices} but only {num_visible_devices} '
                      'devices are visible (leave it unset to use them all)')
    row = (presets.stage2_row(config.stage2.preset, config.data.imbalance_factor)
           if _num(flat['data.imbalance_factor']) else None)
    for key in ('stage1.batch_size', 'stage2.batch_size', 'eval.batch_size'):
      value = flat[key]
      if value is None and key == 'stage2.batch_size' and row is not None:
        value = row['batch_size']
      if _int(value) and value >= 1 and value % devices:
        source = '' if flat[key] is not None else ' (from the stage-2 preset)'
        problems.append(
            f'{key}={value}{source} is not divisible by the {devices} devices '
            f'of the mesh (use a multiple of {devices}, e.g. '
            f'{max(devices, value // devices * devices)})')
    latent = config.model.latent
    if (config.shard_covariance and latent.enabled
        and _int(latent.num_latents) and latent.num_latents % devices):
      m = latent.num_latents
      problems.append(
          f'shard_covariance=True splits the latent moments along M over the '
          f'{devices} devices, but model.latent.num_latents={m} is not '
          f'divisible by {devices} (JAX shards evenly only); use a multiple '
          f'of {devices} (e.g. {max(devices, m // devices * devices)} or '
          f'{-(-m // devices) * devices}), or leave shard_covariance unset '
          'to replicate them')
  if problems:
    raise errors.ConfigError(
        f'the config has {len(problems)} invalid value'
        f'{"s" if len(problems) > 1 else ""}: ' + '; '.join(problems) +
        f'. Fix {"them" if len(problems) > 1 else "it"} in the config file or '
        'with --config.KEY=VALUE; nothing was read or trained.')

  resolved = config.copy_and_resolve_references()
  resolved.unlock()
  resolved.num_devices = devices
  latent = resolved.model.latent
  if resolved.shard_covariance is None:   # see base.py
    resolved.shard_covariance = bool(
        latent.covariance == 'full' and devices > 1
        and latent.num_latents % devices == 0)
  resolved.shard_covariance = bool(resolved.shard_covariance
                                   and latent.enabled)
  dim = resnet.feature_dim(config.model.backbone)
  if resolved.model.latent.similarity_scale is None:
    resolved.model.latent.similarity_scale = 1.0 / math.sqrt(dim)
  if resolved.dlsa.hidden_dim is None:
    resolved.dlsa.hidden_dim = dim
  # The authors' per-data-set values.
  dlsa_config.with_preset(resolved.dlsa, config.data.name)
  row = presets.stage2_row(config.stage2.preset, config.data.imbalance_factor)
  for field in presets.STAGE2_FIELDS:
    if resolved.stage2[field] is None and row is not None:
      resolved.stage2[field] = row[field]
  resolved.lock()
  _RESOLVED[id(resolved)] = (weakref.ref(resolved), resolved.to_dict())
  weakref.finalize(resolved, _RESOLVED.pop, id(resolved), None)
  return resolved


# The configs resolve_and_validate returned, by id, with the values they had
# then: one handed back unchanged (main.py's, again in train_and_evaluate)
# is returned as it is instead of being checked and resolved twice.
_RESOLVED: dict[int, tuple[weakref.ref, dict]] = {}


def _already_resolved(config) -> bool:
  ref, values = _RESOLVED.get(id(config), (None, None))
  return (ref is not None and ref() is config
          and values == config.to_dict())


def validate_against_data(config, info) -> None:
  """Checks that need the data set's description (sizes, not pixels)."""
  n = info.split_sizes['train']
  problems = []
  for stage in ('stage1', 'stage2'):
    if config[stage].enabled and config[stage].batch_size > n:
      problems.append(
          f'{stage}.batch_size={config[stage].batch_size} is larger than the '
          f'{n} training images of {info.name}: lower it (it must also '
          'divide evenly over the devices), or use more data (e.g. a '
          'smaller data.imbalance_factor)')
  s1 = config.stage1
  if s1.enabled:
    problems += drw_problems(s1, samplers.steps_per_epoch(n, s1.batch_size),
                             info.name)
  if problems:
    raise errors.ConfigError('; '.join(problems) + '. Nothing was trained.')
