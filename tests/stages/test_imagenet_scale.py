"""configs/imagenet_lt.py end to end on a generated JPEG tree with OLTR-style
list files, and on the same images as a prepared TFDS build (tiny sizes:
ResNet-8, 32-pixel crops), through all stages."""

import importlib.util
import json
import os

import numpy as np
import pytest

from lcreg_jax import stages
from tests.cli import ROOT
from tests.data import image_tree
from tests.data import tfds_build

pytestmark = pytest.mark.slow


def _imagenet_lt_config():
  spec = importlib.util.spec_from_file_location(
    'imagenet_lt', os.path.join(ROOT, 'configs', 'imagenet_lt.py')
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


COUNTS = [12, 6, 3, 3]
LABELS = np.repeat(np.arange(4), COUNTS)
TEST_LABELS = np.repeat(np.arange(4), 3)


def _tiny(cfg):
  cfg.data.update(num_classes=4, image_size=32, eval_resize=36, val_list='')
  cfg.model.backbone = 'resnet8'
  cfg.model.latent.num_latents = 4
  cfg.stage1.update(steps=2, batch_size=8)
  cfg.stage2.update(steps=2, batch_size=8)
  cfg.eval.update(batch_size=8, plots=False)
  cfg.log_every, cfg.checkpoint_every = 1, 2
  return cfg


def _list_config(tmp_path, photos, test, fmt):
  cfg = _tiny(_imagenet_lt_config())
  cfg.data.update(
    image_root=str(tmp_path),
    train_list=image_tree.write_tree(
      tmp_path, photos, LABELS, 'train.txt', fmt=fmt
    ),
    test_list=image_tree.write_tree(
      tmp_path, test, TEST_LABELS, 'test.txt', fmt=fmt, subdir='val'
    ),
  )
  return cfg


def test_imagenet_lt_config_on_a_jpeg_tree(tmp_path):
  photos = image_tree.random_photos(len(LABELS), seed=0)
  test = image_tree.random_photos(len(TEST_LABELS), seed=1)
  cfg = _list_config(tmp_path, photos, test, 'jpg')
  rows = stages.train_and_evaluate(cfg, str(tmp_path / 'work'))
  assert set(rows) == {'stage1', 'stage2'}
  for stage in rows:
    report = json.load(open(tmp_path / 'work' / stage / 'report.json'))
    assert report['num_examples'] == 12 and 0 <= report['top1'] <= 1
  # Shot groups come from the list's counts: all four classes are few-shot.
  assert rows['stage1']['few_num_classes'] == 4
  recorded = json.load(open(tmp_path / 'work' / 'config.json'))
  assert recorded['data']['augment'] == 'imagenet'
  assert recorded['stage2']['las_head'] == 0.3  # the imagenet_lt row


def test_a_tfds_build_trains_exactly_like_the_same_images_as_files(tmp_path):
  """The same PNG images as a list-file tree and as a TFDS build (records in
  the list's order): both runs report the same numbers."""
  photos = image_tree.random_photos(
    len(LABELS), seed=0, sizes=((50, 40), (40, 60))
  )
  test = image_tree.random_photos(
    len(TEST_LABELS), seed=1, sizes=((50, 40), (40, 60))
  )
  files = _list_config(tmp_path / 'tree', photos, test, 'png')
  tfds_build.write_build(
    tmp_path / 'tfds',
    'lcreg_tiny_imagenet_lt',
    {
      'train': (photos, LABELS, [f'train/{i}.png' for i in range(len(LABELS))]),
      'test': (
        test,
        TEST_LABELS,
        [f'val/{i}.png' for i in range(len(TEST_LABELS))],
      ),
    },
    num_classes=4,
  )
  built = _tiny(_imagenet_lt_config())
  built.data.update(
    source='tfds_stream',
    tfds_name='lcreg_tiny_imagenet_lt',
    tfds_data_dir=str(tmp_path / 'tfds'),
    image_root='',
    train_list='',
    test_list='',
  )
  rows = [
    stages.train_and_evaluate(c, str(tmp_path / name))
    for c, name in ((files, 'files'), (built, 'tfds'))
  ]
  assert (
    rows[0]['stage2']['num_examples'] == rows[1]['stage2']['num_examples'] == 12
  )
  for stage in ('stage1', 'stage2'):
    for key in ('top1', 'nll', 'ece'):
      assert rows[0][stage][key] == rows[1][stage][key], (stage, key)
