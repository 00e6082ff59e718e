"""Fashion-MNIST-LT with the CIFAR-LT recipe (docs/method.md §1, §4, §5).

IDX files from Debian's `dataset-fashion-mnist` (default location) or any
MNIST-format directory via --config.data.data_dir; TFDS via
--config.data.source=tfds --config.data.tfds_name=fashion_mnist.

Command:
  python -m lcreg_jax.main --config=configs/fashion_mnist_lt.py --workdir=workdirs/fashion_mnist_lt
Result to expect: no run record yet (docs/results.md lists the recorded
runs; docs/method.md §7 gives the published figures).
"""

from lcreg_jax import config


def get_config():
  c = config.base_config()
  c.data.name = 'fashion_mnist'
  c.data.source = 'idx'
  c.data.tfds_name = 'fashion_mnist'
  c.data.image_size, c.data.channels, c.data.num_classes = 28, 1, 10
  c.data.imbalance_factor = 100.0
  c.model.latent.num_latents = 40
  c.stage2.preset = 'cifar10'
  c.log_every = 50
  c.checkpoint_every = 1000
  return c
