"""Writes a config's long-tailed data set as an image tree with OLTR-style
list files, so the streaming path can be run on real images next to the
in-memory path on the same data.

  python benchmarks/export_list_tree.py --config=configs/fashion_mnist_lt.py \\
      --out=data/fmnist_lt_png --format=png

Writes <out>/train/<label>/<i>.<format>, <out>/test/<label>/<i>.<format>,
<out>/train.txt and <out>/test.txt ("relative/path label" per line), and
prints the overrides that train on them:

  python -m lcreg_jax.main --config=configs/fashion_mnist_lt.py \\
      --config.data.source=list --config.data.image_root=<out> --config.data.train_list=<out>/train.txt \\
      --config.data.test_list=<out>/test.txt

PNG is lossless: the streamed batches then equal the in-memory ones
(tests/data/test_streaming.py checks this); JPEG changes the pixels a little.
"""

import os

from absl import flags
from ml_collections import config_flags
import numpy as np
from PIL import Image

from lcreg_jax import cli
from lcreg_jax import config as config_lib
from lcreg_jax.data import sources

config_flags.DEFINE_config_file(
  'config',
  'configs/fashion_mnist_lt.py',
  'Config whose (in-memory) data set is written.',
)
flags.DEFINE_string('out', 'data/fmnist_lt_png', 'Folder to write.')
flags.DEFINE_enum('format', 'png', ['png', 'jpg'], 'Image file format.')
FLAGS = flags.FLAGS


def write_split(
  root: str, split: str, images: np.ndarray, labels: np.ndarray, fmt: str
) -> str:
  lines = []
  for i, (image, label) in enumerate(zip(images, labels)):
    rel = os.path.join(split, str(int(label)), f'{i:06d}.{fmt}')
    os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
    pixels = image[..., 0] if image.shape[-1] == 1 else image
    Image.fromarray(pixels).save(os.path.join(root, rel), quality=95)
    lines.append(f'{rel} {int(label)}')
  path = os.path.join(root, f'{split}.txt')
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return path


def main(argv):
  del argv
  config = config_lib.resolve_and_validate(FLAGS.config, num_visible_devices=1)
  arrays = sources.load_dataset(config.data)
  out = FLAGS.out
  train = write_split(
    out, 'train', arrays.train.images, arrays.train.labels, FLAGS.format
  )
  test = write_split(
    out, 'test', arrays.test.images, arrays.test.labels, FLAGS.format
  )
  print(
    f'{len(arrays.train.labels)} training and {len(arrays.test.labels)} '
    f'test images of {arrays.name} written to {out}. Train on them with\n'
    f'  --config.data.source=list '
    f'--config.data.image_root={out} --config.data.train_list={train} '
    f'--config.data.test_list={test}'
  )


if __name__ == '__main__':
  cli.run(main)
