"""Writes image trees with OLTR-style list files for the tests."""

import os

import numpy as np
from PIL import Image


def write_tree(root, images, labels, list_name, fmt='png', subdir='train'):
  """Writes images (N, H, W, C) uint8 as files under root/subdir/<label>/ and
  a list file root/list_name of "subdir/<label>/<i>.<fmt> label" lines.
  Returns the list file's path."""
  lines = []
  for i, (image, label) in enumerate(zip(images, labels)):
    rel = os.path.join(subdir, str(int(label)), f'{i:05d}.{fmt}')
    os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
    array = image[..., 0] if image.shape[-1] == 1 else image
    Image.fromarray(array).save(os.path.join(root, rel))
    lines.append(f'{rel} {int(label)}')
  path = os.path.join(root, list_name)
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return path


def random_photos(n, seed=0, sizes=((375, 500), (500, 375), (120, 90))):
  """n random RGB images of varied sizes (smooth, so JPEG keeps them)."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    h, w = sizes[i % len(sizes)]
    small = rng.integers(0, 256, (h // 15 + 1, w // 15 + 1, 3)).astype(np.uint8)
    out.append(
      np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))
    )
  return out
