"""Digits-LT: the embedded default, both stages in a few CPU minutes.

scikit-learn's 8×8 digits (no download): 30 test images per class, the rest
long-tailed at IF 10. Short schedules scaled down from the CIFAR recipe.

Command:
  python -m lcreg_jax.main --config=configs/default.py --workdir=workdirs/default
Result to expect (results/default.json; test top-1 / many / medium / few, %):
  stage 1 86.33 / 97.50 / 95.00 / 46.67, stage 2 93.33 / 96.67 / 94.17 / 85.00.
With --config.dlsa.enabled=True (results/default_dlsa.json) DLSA adds 88.67
and its depth-0 control 92.33. These 300 test digits are noisy, and the
numbers differ between machines (XLA:CPU's arithmetic differs by CPU).
"""

from lcreg_jax import config


def get_config():
  c = config.base_config()
  c.data.name = 'digits'
  c.data.source = 'digits'
  c.data.image_size, c.data.channels, c.data.num_classes = 8, 1, 10
  c.data.imbalance_factor = 10.0
  c.data.pad = 1
  c.data.augment = 'crop'  # a mirrored digit is not the same digit
  c.model.latent.num_latents = 20
  c.stage1.epochs = 30.0
  c.stage1.batch_size = 64
  c.stage1.warmup_epochs = 2.0
  c.stage1.decay_epochs = (24.0, 27.0)
  c.stage2.epochs = 10.0
  c.stage2.batch_size = 64
  c.stage2.preset = 'cifar10'
  c.log_every = 10
  c.checkpoint_every = 100
  c.eval.many_threshold, c.eval.few_threshold = 60, 20
  return c
