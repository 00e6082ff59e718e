"""resolve_and_validate: every choice and range is checked before any work,
all problems are named at once, and placeholders resolve once."""

import json
import math

import ml_collections
import pytest

from lcreg_jax import config as config_lib
from lcreg_jax import errors
from lcreg_jax.config import presets
from lcreg_jax.config import validate


def _base():
  c = config_lib.base_config()
  c.lock()
  return c


def _problems(**overrides):
  c = _base()
  for key, value in overrides.items():
    validate._set(c, key.replace('__', '.'), value)  # pylint: disable=protected-access
  with pytest.raises(errors.ConfigError) as e:
    config_lib.resolve_and_validate(c, num_visible_devices=4)
  return str(e.value)


@pytest.mark.parametrize(
  'key,value,what',
  [
    ('stage1.batch_size', 0, 'integer >= 1'),
    ('stage2.batch_size', -8, 'integer >= 1'),
    ('stage1.epochs', 0.0, 'number > 0'),
    ('stage2.epochs', -1.0, 'number > 0'),
    ('stage1.steps', 0, 'integer >= 1'),
    ('model.latent.num_latents', 0, 'integer >= 1'),
    ('dlsa.num_clusters', 0, 'integer >= 1'),
    ('stage2.las_head', 1.5, '[0, 1]'),
    ('stage2.las_tail', -0.1, '[0, 1]'),
    ('dlsa.top_fraction', 1.0, '(0, 1)'),
    ('dlsa.depth', -1, 'integer >= 0'),
    ('data.imbalance_factor', 0.5, '>= 1'),
    ('stage1.momentum', 1.0, '[0, 1)'),
    ('stage1.decay_epochs', (180.0, 160.0), 'ascending'),
    ('log_every', 0, 'integer >= 1'),
    ('eval.batch_size', 0, 'integer >= 1'),
    ('stage1.lr', float('nan'), 'number > 0'),
  ],
)
def test_each_range_is_checked(key, value, what):
  msg = _problems(**{key.replace('.', '__'): value})
  assert f'{key}={value!r}' in msg and what in msg


@pytest.mark.parametrize(
  'key,value',
  [
    ('model.backbone', 'resnet7'),
    ('data.source', 'imagenet'),
    ('stage2.preset', 'cifar1000'),
    ('dlsa.purity_type', 'hinge'),
    ('dlsa.flow_schedule', 'linear'),
    ('dlsa.flow_select_metric', 'acc'),
    ('model.classify_on', 'features'),
    ('stage2.las_shape', 'cubic'),
  ],
)
def test_each_choice_is_checked(key, value):
  msg = _problems(**{key.replace('.', '__'): value})
  assert f'{key}={value!r} is not one of' in msg


def test_all_problems_are_reported_together():
  msg = _problems(
    stage1__batch_size=0, model__latent__num_latents=-1, model__backbone='vgg'
  )
  assert msg.startswith('the config has 3 invalid values')
  for key in (
    'stage1.batch_size',
    'model.latent.num_latents',
    'model.backbone',
  ):
    assert key in msg


def test_batch_sizes_must_divide_over_the_devices():
  msg = _problems(stage1__batch_size=6)
  assert 'stage1.batch_size=6 is not divisible by the 4 devices' in msg
  assert 'num_devices=8 but only 4' in _problems(num_devices=8)
  # A batch size taken from the preset row is checked too (128 over 3 devices).
  msg = _problems(num_devices=3, stage1__batch_size=6, eval__batch_size=6)
  assert (
    'stage2.batch_size=128 (from the stage-2 preset) is not divisible' in msg
  )


def test_cross_checks():
  assert 'stage2.las_power' in _problems(stage2__las_shape='exp')
  assert 'stage1.warmup_epochs=0.5 must be a whole number' in _problems(
    stage1__warmup_epochs=0.5
  )
  assert 'nothing to run' in _problems(
    stage1__enabled=False, stage2__enabled=False
  )
  assert 'few_threshold' in _problems(eval__few_threshold=200)
  # A CIFAR preset at an IF it has no row for, with nothing set explicitly.
  msg = _problems(data__imbalance_factor=20.0)
  assert 'no row for data.imbalance_factor=20' in msg
  assert 'stage2.las_head' in msg
  # Streaming from a TFDS build.
  msg = _problems(
    data__source='tfds_stream', data__image_root='x', data__val_list='v.txt'
  )
  assert 'data.source=tfds_stream needs data.tfds_name' in msg
  assert 'data.image_root is set but data.source=tfds_stream' in msg
  assert 'data.tfds_val_split is empty' in msg
  assert 'needs data.source=list or tfds_stream' in _problems(
    data__source='tfds',
    data__tfds_name='cifar10',
    data__augment='imagenet',
    data__channels=3,
  )
  assert 'needs data.tfds_test_split' in _problems(
    data__source='tfds', data__tfds_name='cifar10', data__tfds_test_split=''
  )


def test_unknown_and_missing_keys_are_rejected():
  c = config_lib.base_config()
  c.stage1.learning_rate = 0.1  # unlocked: a config file's typo
  del c.stage2['samples_per_class']
  with pytest.raises(errors.ConfigError) as e:
    config_lib.resolve_and_validate(c, num_visible_devices=1)
  assert 'stage1.learning_rate' in str(e.value)
  assert 'stage2.samples_per_class' in str(e.value)


def test_placeholders_resolve_once():
  c = _base()
  c.data.imbalance_factor = 50.0
  c.stage2.preset = 'cifar100'
  c.stage2.las_head = 0.25  # an explicit value beats the preset
  r = config_lib.resolve_and_validate(c, num_visible_devices=4)
  assert (
    r.stage2.las_head,
    r.stage2.las_tail,
    r.stage2.shift_bn,
    r.stage2.lr_factor,
  ) == (0.25, 0.0, True, 0.1)
  assert r.num_devices == 4
  assert r.model.latent.similarity_scale == pytest.approx(1 / math.sqrt(64))
  assert r.dlsa.hidden_dim == 64
  # The input is untouched, the result locked, and resolving is idempotent.
  assert c.stage2.las_tail is None and c.num_devices is None
  with pytest.raises(AttributeError):
    r.stage2.new_key = 1
  again = config_lib.resolve_and_validate(r, num_visible_devices=4)
  assert json.dumps(again.to_dict(), sort_keys=True) == json.dumps(
    r.to_dict(), sort_keys=True
  )


def test_preset_rows_follow_the_design_table():
  assert presets.stage2_row('cifar100', 100) == dict(
    las_head=0.4,
    las_tail=0.1,
    shift_bn=True,
    lr_factor=0.2,
    weight_decay=2e-4,
    batch_size=128,
  )
  # MiSLAS's stage-2 weight decay and batch size per data set.
  assert [
    (
      presets.stage2_row(p, 1)['weight_decay'],
      presets.stage2_row(p, 1)['batch_size'],
    )
    for p in ('imagenet_lt', 'inat2018', 'places_lt')
  ] == [(5e-4, 256), (1e-4, 256), (5e-4, 256)]
  assert presets.stage2_row('cifar10', 50)['las_head'] == 0.2
  assert presets.stage2_row('imagenet_lt', 123)['lr_factor'] == 0.05
  assert presets.stage2_row('cifar10', 20) is None


def test_a_disabled_stage2_needs_no_preset_row():
  c = _base()
  c.data.imbalance_factor = 20.0
  c.stage2.enabled = False
  r = config_lib.resolve_and_validate(c, num_visible_devices=1)
  assert r.stage2.las_head is None


def test_batch_larger_than_the_training_set():
  info = ml_collections.ConfigDict(
    dict(split_sizes={'train': 100}, name='tiny')
  )
  c = config_lib.resolve_and_validate(_base(), num_visible_devices=1)
  with pytest.raises(errors.ConfigError, match='larger than the 100'):
    config_lib.validate_against_data(c, info)


def test_a_resolved_config_passed_again_is_not_resolved_twice():
  c = _base()
  r = config_lib.resolve_and_validate(c, num_visible_devices=1)
  assert config_lib.resolve_and_validate(r, num_visible_devices=1) is r
  # Changed after resolving: checked again, and a bad value is caught.
  r.stage1.lr = -1.0
  with pytest.raises(errors.ConfigError, match=r'stage1.lr=-1.0 must be'):
    config_lib.resolve_and_validate(r, num_visible_devices=1)


def test_data_checks_report_the_batch_and_the_drw_switch_together():
  info = ml_collections.ConfigDict(
    dict(split_sizes={'train': 100}, name='tiny')
  )
  c = _base()
  c.stage1.update(reweight='drw', steps=3, drw_epoch=200.0)
  r = config_lib.resolve_and_validate(c, num_visible_devices=1)
  with pytest.raises(errors.ConfigError) as e:
    config_lib.validate_against_data(r, info)
  assert 'larger than the 100' in str(e.value)
  assert 'stage1.reweight=drw switches the weights on at step' in str(e.value)
