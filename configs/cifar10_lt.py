"""CIFAR-10-LT, MiSLAS recipe + LCReg with M = 40 (docs/method.md §1–5).

--config.data.data_dir points at the extracted python-format
`cifar-10-batches-py`; or --config.data.source=tfds.

Command:
  python -m lcreg_jax.main --config=configs/cifar10_lt.py --workdir=workdirs/cifar10_lt \
      --config.data.data_dir=/path/to/cifar-10-batches-py --config.data.imbalance_factor=100
Result to expect: no run record yet (docs/results.md lists the recorded
runs; docs/method.md §7 gives the published figures).
"""

from lcreg_jax import config


def get_config():
  c = config.base_config()
  c.data.name = 'cifar10'
  c.data.source = 'cifar10'
  c.data.tfds_name = 'cifar10'
  c.data.image_size, c.data.channels, c.data.num_classes = 32, 3, 10
  c.data.imbalance_factor = 100.0  # 10 / 50 / 100 also picks stage-2 row
  c.model.latent.num_latents = 40
  c.stage2.preset = 'cifar10'
  c.checkpoint_every = 1000
  return c
