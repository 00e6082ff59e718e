"""benchmarks/input_throughput.py runs from a checkout without torch, and the
thread limit it uses (`streaming.make_train_iterator(threads=...)`) changes
only the speed, never the batches."""

import itertools
import re
import subprocess
import sys

import numpy as np
import pytest

from lcreg_jax import config as config_lib
from lcreg_jax import parallel
from lcreg_jax.data import dataset
from lcreg_jax.data import streaming
from tests import cli
from tests.data import image_tree


@pytest.mark.slow
def test_benchmark_measures_ours_and_says_how_to_get_the_reference(tmp_path):
  res = subprocess.run(
    [
      sys.executable,
      'benchmarks/input_throughput.py',
      '--images=16',
      '--batch_size=8',
      '--batches=2',
      '--warmup=1',
      '--rounds=1',
      '--workers=2',
      f'--dir={tmp_path}',
      '--torch_python=',
    ],
    cwd=cli.ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert res.returncode == 0, res.stderr[-3000:]
  ours = next(l for l in res.stdout.splitlines() if l.startswith('ours '))
  assert float(re.search(r': ([0-9.]+) images/s,', ours).group(1)) > 0
  assert 'peak RSS' in ours
  assert 'reference not measured: --torch_python not given' in res.stdout
  assert 'pip install torch==' in res.stdout
  assert len(list((tmp_path / 'images').iterdir())) == 16


def test_a_thread_limit_gives_the_same_batches(tmp_path):
  """threads=1 (private pool, single-threaded ops) vs tf.data's default."""
  photos = image_tree.random_photos(12, seed=1)  # 375x500, 500x375 and 120x90
  labels = np.arange(12) % 3
  root = str(tmp_path)
  # JPEGs, so that the fused decode-and-crop path is the one compared.
  list_path = image_tree.write_tree(
    root, photos, labels, 'train.txt', fmt='jpg'
  )
  cfg = config_lib.base_config().data
  cfg.update(
    source='list',
    augment='imagenet',
    image_size=224,
    channels=3,
    imbalance_factor=1.0,
    num_classes=3,
    image_root=root,
    train_list=list_path,
    test_list=list_path,
  )
  data = dataset.load(cfg)
  split = data._splits['train']  # pylint: disable=protected-access

  def batches(**kw):
    it = streaming.make_train_iterator(
      split.reader,
      split.labels,
      global_batch_size=4,
      sharding=parallel.batch_sharding(parallel.make_mesh(1)),
      seed=5,
      example_fn=data._train_fn(4),
      **kw,
    )  # pylint: disable=protected-access
    # 4 steps: across the boundary of the 3-step epoch.
    return [
      {k: np.asarray(v) for k, v in b.items()} for b in itertools.islice(it, 4)
    ]

  default, limited = batches(), batches(threads=1)
  for a, b in zip(default, limited):
    np.testing.assert_array_equal(a['label'], b['label'])
    np.testing.assert_array_equal(a['image'], b['image'])
  assert not np.array_equal(default[0]['image'], default[3]['image'])
