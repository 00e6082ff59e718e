"""The full set of config keys; files in configs/ start from this.

Every key a run can read exists here, so a misspelt override
(`--config.stage1.lr_typo=1`) is rejected by ml_collections instead of being
silently ignored.
"""

import ml_collections

from lcreg_jax.dlsa import config as dlsa_config


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_devices = 0          # 0 = every visible device
  c.log_every = 50           # steps between metric writes / NaN checks
  c.checkpoint_every = 500   # steps between checkpoints (and at the end)

  c.data = ml_collections.ConfigDict(dict(
      name='',               # for reports; '' = derived from the source
      source='digits',       # digits | idx | cifar10 | cifar100 | tfds
      data_dir='',           # '' = the source's default location
      tfds_name='', tfds_data_dir='',
      num_classes=10, image_size=8, channels=1,
      imbalance_factor=10.0, lt_seed=0,
      digits_test_per_class=30, val_per_class=0,
      augment='crop_flip',   # crop_flip | crop | flip | none
      pad=4,
  ))

  c.model = ml_collections.ConfigDict(dict(
      backbone='resnet32', shortcut='A', dtype='float32',
      classify_on='sum',     # sum = GAP(F + F̂) | feature | reconstruction
  ))
  c.model.latent = ml_collections.ConfigDict(dict(
      enabled=True, num_latents=40,
      similarity_scale=0.0,  # 0 = 1/sqrt(D); the paper's literal form is 1
      tau_assign=1.0,
      covariance='full',     # full | diagonal
      recon_normalize=False, recon_temperature=1.0,
      explicit_latent_aug=False,
  ))

  c.stage1 = ml_collections.ConfigDict(dict(
      enabled=True, epochs=200.0, steps=0, batch_size=128,
      lr=0.1, momentum=0.9, weight_decay=2e-4,
      schedule='step',       # step | cosine
      warmup_epochs=5.0, decay_epochs=(160.0, 180.0), decay_factor=0.1,
      mixup_alpha=1.0,
      alpha=0.1, beta=0.1, gamma=1.0,   # eq. 7 weights of aug, recon, cls
      isda_lambda0=0.5,
  ))

  c.stage2 = ml_collections.ConfigDict(dict(
      enabled=True,
      init_from='',          # '' = <workdir>/stage1/checkpoints
      epochs=10.0, steps=0, batch_size=128,
      lr=0.1, momentum=0.9, weight_decay=5e-4,
      samples_per_class=4,
      preset='cifar10',      # row of DESIGN §4 chosen with imbalance_factor
      # Negative = take the value from the preset row.
      las_head=-1.0, las_tail=-1.0, shift_bn=-1, lr_factor=-1.0,
      las_shape='concave', las_power=0.0,
  ))

  c.eval = ml_collections.ConfigDict(dict(
      batch_size=256, num_bins=15, many_threshold=100, few_threshold=20,
      plots=True,
  ))

  c.dlsa = dlsa_config.get_dlsa_config()
  return c


_CHOICES = {
    'data.source': ('digits', 'idx', 'cifar10', 'cifar100', 'tfds'),
    'data.augment': ('crop_flip', 'crop', 'flip', 'none'),
    'model.classify_on': ('sum', 'feature', 'reconstruction'),
    'model.shortcut': ('A', 'B'),
    'model.dtype': ('float32', 'bfloat16'),
    'model.latent.covariance': ('full', 'diagonal'),
    'stage1.schedule': ('step', 'cosine'),
    'stage2.las_shape': ('concave', 'linear', 'convex', 'exp'),
}


def validate(config):
  """Rejects values that are the right type but not a known choice."""
  from lcreg_jax import errors  # pylint: disable=g-import-not-at-top
  for key, choices in _CHOICES.items():
    value = config
    for part in key.split('.'):
      value = value[part]
    if value not in choices:
      raise errors.ConfigError(f'config.{key}={value!r} is not one of '
                               f'{choices}; fix --config.{key}.')
  if config.stage2.las_shape == 'exp' and config.stage2.las_power <= 0:
    raise errors.ConfigError('stage2.las_shape=exp needs a power > 0: set '
                             '--config.stage2.las_power.')
