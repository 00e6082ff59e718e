"""The checkpoint fingerprint: keys added to the model config later are
left out at the value earlier runs used, so their checkpoints still match."""

import types

from lcreg_jax import config as config_lib
from lcreg_jax.stages import common


def _ctx(**model):
  c = config_lib.base_config()
  c.model.update(model)
  info = types.SimpleNamespace(num_classes=10, image_shape=(8, 8, 1))
  return types.SimpleNamespace(config=c, info=info)


def test_keys_added_later_are_left_out_at_their_old_value():
  fp = common.fingerprint(_ctx(), 'stage1')
  # What a run written before model.head existed stored: the model config
  # without the added keys.
  old = config_lib.base_config().model.to_dict()
  for key in common.MODEL_KEYS_ADDED:
    assert old.pop(key) == common.MODEL_KEYS_ADDED[key]
  assert fp == dict(stage='stage1', num_classes=10, image_shape=[8, 8, 1],
                    model=old)


def test_a_changed_added_key_changes_the_fingerprint():
  plain = common.fingerprint(_ctx(), 'stage1')
  normed = common.fingerprint(_ctx(head='normed'), 'stage1')
  assert normed != plain
  assert normed['model']['head'] == 'normed'
  assert 'normed_scale' not in normed['model']   # still the old value
  scaled = common.fingerprint(_ctx(head='normed', normed_scale=16.0),
                              'stage1')
  assert scaled['model']['normed_scale'] == 16.0
