"""CIFAR-100-LT, MiSLAS recipe + LCReg with M = 50 (docs/method.md §1–5).

--config.data.data_dir points at the extracted python-format
`cifar-100-python`; or --config.data.source=tfds.

Command:
  python -m lcreg_jax.main --config=configs/cifar100_lt.py --workdir=workdirs/cifar100_lt \
      --config.data.data_dir=/path/to/cifar-100-python --config.data.imbalance_factor=100
Result to expect: no run record yet (docs/results.md lists the recorded
runs; docs/method.md §7 gives the published figures).
"""

from lcreg_jax import config


def get_config():
  c = config.base_config()
  c.data.name = 'cifar100'
  c.data.source = 'cifar100'
  c.data.tfds_name = 'cifar100'
  c.data.image_size, c.data.channels, c.data.num_classes = 32, 3, 100
  c.data.imbalance_factor = 100.0  # 10 / 50 / 100 also picks stage-2 row
  c.model.latent.num_latents = 50
  c.stage2.preset = 'cifar100'
  c.checkpoint_every = 1000
  return c
