"""The checkpoint fingerprint: keys added to the model config later are
left out at the value earlier runs used, so their checkpoints still match;
and the schedule length of a class-balanced stage."""

import types

import numpy as np
import pytest

from lcreg_jax import checkpoints
from lcreg_jax import config as config_lib
from lcreg_jax import errors
from lcreg_jax.config import presets
from lcreg_jax.stages import common
from lcreg_jax.stages import stage2


def _ctx(**model):
  c = config_lib.base_config()
  c.model.update(model)
  info = types.SimpleNamespace(num_classes=10, image_shape=(8, 8, 1))
  return types.SimpleNamespace(config=c, info=info)


# The added keys' values that reproduce a resnet32 run written before them
# (the others' defaults are their old values).
OLD = dict(init='flax', zero_init_residual=False)


def test_keys_added_later_are_left_out_at_their_old_value():
  for backbone, zero in (('resnet32', False), ('resnet50', True)):
    fp = common.fingerprint(
      _ctx(backbone=backbone, init='flax', zero_init_residual=zero), 'stage1'
    )
    # What a run written before model.head existed stored: the model config
    # without the added keys.
    old = config_lib.base_config().model
    old.update(backbone=backbone)
    old = old.to_dict()
    for key in common.MODEL_KEYS_ADDED:
      old.pop(key)
    assert fp == dict(
      stage='stage1', num_classes=10, image_shape=[8, 8, 1], model=old
    )


def test_the_authors_init_is_in_the_fingerprint():
  fp = common.fingerprint(_ctx(), 'stage1')['model']
  assert fp['init'] == 'authors' and 'zero_init_residual' not in fp
  fp = common.fingerprint(_ctx(backbone='resnet50'), 'stage1')['model']
  assert fp['init'] == 'authors' and fp['zero_init_residual'] is False


def test_a_changed_added_key_changes_the_fingerprint():
  plain = common.fingerprint(_ctx(**OLD), 'stage1')
  normed = common.fingerprint(_ctx(head='normed', **OLD), 'stage1')
  assert normed != plain
  assert normed['model']['head'] == 'normed'
  assert 'normed_scale' not in normed['model']  # still the old value
  scaled = common.fingerprint(
    _ctx(head='normed', normed_scale=16.0, **OLD), 'stage1'
  )
  assert scaled['model']['normed_scale'] == 16.0


@pytest.mark.parametrize(
  'method, epoch_length, spe',
  [
    ('mislas', 'train_set', 16 // 4 + 1),  # MiSLAS: ceil(N/B) + 1
    ('crt', 'train_set', 15 // 4),  # classifier-balancing: floor(N/B)
    ('mislas', 'sampler', 8 * 3 // 4),  # max n_c x C, full batches
  ],
)
def test_stage2_schedule_length(method, epoch_length, spe):
  cfg = config_lib.base_config().stage2
  cfg.update(method=method, epoch_length=epoch_length, epochs=3.0)
  cfg.batch_size = 4
  counts = [8, 4, 3] if method == 'crt' else [8, 4, 4]
  info = types.SimpleNamespace(class_counts=np.array(counts))
  assert common.schedule_length(cfg, info, stage2.SAMPLER) == (spe, 3 * spe)


def test_stage2_checkpoints_from_before_epoch_length_resume_only_as_sampler(
  tmp_path,
):
  # What a stage-2 checkpoint of MiSLAS (cifar10 preset, IF 100) stored
  # before stage2.method and stage2.epoch_length existed.
  old = presets.stage2_row('cifar10', 100)
  ckpt = checkpoints.StageCheckpoints(tmp_path, {'stage2_settings': old})
  ckpt.save(1, {'w': np.zeros(2)})
  ckpt.close()
  cfg = config_lib.base_config().stage2
  cfg.update(old)
  cfg.epoch_length = 'sampler'
  fp = {'stage2_settings': stage2.fingerprint_settings(cfg)}
  checkpoints.StageCheckpoints(tmp_path, fp).close()
  cfg.epoch_length = 'train_set'
  fp = {'stage2_settings': stage2.fingerprint_settings(cfg)}
  with pytest.raises(
    errors.CheckpointError,
    match="stage2_settings.epoch_length: stored 'sampler', this run "
    "'train_set'",
  ):
    checkpoints.StageCheckpoints(tmp_path, fp)
