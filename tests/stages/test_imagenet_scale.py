"""configs/imagenet_lt.py end to end on a generated JPEG tree with OLTR-style
list files (tiny sizes: ResNet-8, 32-pixel crops), through all stages."""

import importlib.util
import json
import os

import numpy as np
import pytest

from lcreg_jax import stages
from tests.cli import ROOT
from tests.data import image_tree

pytestmark = pytest.mark.slow


def _imagenet_lt_config():
  spec = importlib.util.spec_from_file_location(
      'imagenet_lt', os.path.join(ROOT, 'configs', 'imagenet_lt.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_imagenet_lt_config_on_a_jpeg_tree(tmp_path):
  counts = [12, 6, 3, 3]
  labels = np.repeat(np.arange(4), counts)
  photos = image_tree.random_photos(len(labels), seed=0)
  test_labels = np.repeat(np.arange(4), 3)
  test = image_tree.random_photos(len(test_labels), seed=1)
  cfg = _imagenet_lt_config()
  cfg.data.update(
      image_root=str(tmp_path), num_classes=4, image_size=32, eval_resize=36,
      train_list=image_tree.write_tree(tmp_path, photos, labels, 'train.txt',
                                       fmt='jpg'),
      val_list='',
      test_list=image_tree.write_tree(tmp_path, test, test_labels, 'test.txt',
                                      fmt='jpg', subdir='val'))
  cfg.model.backbone = 'resnet8'
  cfg.model.latent.num_latents = 4
  cfg.stage1.update(steps=2, batch_size=8)
  cfg.stage2.update(steps=2, batch_size=8)
  cfg.eval.update(batch_size=8, plots=False)
  cfg.log_every, cfg.checkpoint_every = 1, 2
  rows = stages.train_and_evaluate(cfg, str(tmp_path / 'work'))
  assert set(rows) == {'stage1', 'stage2'}
  for stage in rows:
    report = json.load(open(tmp_path / 'work' / stage / 'report.json'))
    assert report['num_examples'] == 12 and 0 <= report['top1'] <= 1
  # Shot groups come from the list's counts: all four classes are few-shot.
  assert rows['stage1']['few_num_classes'] == 4
  recorded = json.load(open(tmp_path / 'work' / 'config.json'))
  assert recorded['data']['augment'] == 'imagenet'
  assert recorded['stage2']['las_head'] == 0.3       # the imagenet_lt row
