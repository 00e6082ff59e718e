"""Every file in configs/ is valid, declares no key of its own, and picks
the paper's settings."""

import glob
import importlib.util
import os

import pytest

from lcreg_jax import config as config_lib
from lcreg_jax.config import base
from lcreg_jax.config import presets

ROOT = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))


def _load(path):
  spec = importlib.util.spec_from_file_location('cfg', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_config_file_resolves_and_has_only_base_keys(path):
  config = _load(path)
  resolved = config_lib.resolve_and_validate(config, num_visible_devices=1)
  # No placeholder is left for the run to interpret, except steps (which
  # defer to epochs), the power only las_shape=exp reads,
  # trainable_blocks (None: the whole backbone learns), eval.val_every
  # (None: once per epoch of each stage) and dlsa.flow_grad_clip (None: no
  # clipping, the authors' form), DLSA's keys whose None is the authors'
  # form (flow checks every epoch, classifier epochs, PyTorch's MADE init),
  # and the optional paths and names (None: not given).
  flat = config_lib.validate.flatten(resolved)
  unresolved = {k for k, v in flat.items() if v is None}
  optional = {
    f.key for f in base.ALL_FIELDS if f.type is str and f.default is None
  }
  assert (
    unresolved
    <= {
      'stage1.steps',
      'stage2.steps',
      'stage2.las_power',
      'model.trainable_blocks',
      'eval.val_every',
      'dlsa.flow_grad_clip',
      'dlsa.flow_eval_every',
      'dlsa.classifier_steps',
      'dlsa.made_out_scale',
    }
    | optional
  )
  assert resolved.num_devices == 1


@pytest.mark.parametrize(
  'path', [p for p in CONFIGS if 'cifar' in p], ids=os.path.basename
)
@pytest.mark.parametrize('imbalance', [10, 50, 100])
def test_cifar_configs_pick_a_stage2_row_for_each_imbalance(path, imbalance):
  config = _load(path)
  config.data.imbalance_factor = float(imbalance)
  resolved = config_lib.resolve_and_validate(config, num_visible_devices=1)
  row = presets.STAGE2_PRESETS[(config.stage2.preset, imbalance)]
  assert tuple(resolved.stage2[f] for f in presets.STAGE2_FIELDS) == row
  # The paper's M per data set (docs/method.md §5).
  assert config.model.latent.num_latents == (
    50 if config.data.num_classes == 100 else 40
  )


# docs/method.md §5 stage-1 recipes and §4 stage-2 rows of the ImageNet-scale sets.
RECIPES = {
  'imagenet_lt.py': dict(
    backbone='resnet50',
    M=100,
    epochs=180,
    wd=5e-4,
    wd2=5e-4,
    classes=1000,
    preset='imagenet_lt',
  ),
  'inat2018.py': dict(
    backbone='resnet50',
    M=200,
    epochs=200,
    wd=1e-4,
    wd2=1e-4,
    classes=8142,
    preset='inat2018',
  ),
  'places_lt.py': dict(
    backbone='resnet152',
    M=100,
    epochs=90,
    wd=5e-4,
    wd2=5e-4,
    classes=365,
    preset='places_lt',
  ),
}


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_imagenet_scale_recipes(name):
  r = RECIPES[name]
  c = _load(os.path.join(ROOT, 'configs', name))
  assert (c.model.backbone, c.model.latent.num_latents) == (
    r['backbone'],
    r['M'],
  )
  s1 = c.stage1
  assert (
    s1.epochs,
    s1.batch_size,
    s1.lr,
    s1.weight_decay,
    s1.schedule,
    s1.warmup_epochs,
    s1.mixup_alpha,
  ) == (r['epochs'], 256, 0.1, r['wd'], 'cosine', 0.0, 0.2)
  # Stage 2's batch and weight decay come from the preset row.
  resolved = config_lib.resolve_and_validate(c, num_visible_devices=1).stage2
  assert (resolved.preset, resolved.batch_size, resolved.weight_decay) == (
    r['preset'],
    256,
    r['wd2'],
  )
  d = c.data
  assert (d.source, d.augment, d.image_size, d.eval_resize, d.num_classes) == (
    'list',
    'imagenet',
    224,
    256,
    r['classes'],
  )


def test_places_lt_trains_only_a_fresh_last_block():
  c = _load(os.path.join(ROOT, 'configs', 'places_lt.py'))
  assert c.model.trainable_blocks == 1
  # The block that trains is the one the weight import leaves fresh.
  from lcreg_jax.models import resnet  # pylint: disable=g-import-not-at-top

  last = resnet.block_names('resnet152')[-1]
  assert c.model.pretrained_dont_load == (
    f'params/backbone/{last}/.*',
    f'batch_stats/backbone/{last}/.*',
  )


def test_an_empty_value_clears_an_optional_path_to_none():
  # `--config.data.image_root=` (the configs' docstrings clear list paths so)
  # must mean "not given", as the None default does, not a path ''.
  config = base.base_config()
  config.data.image_root = ''
  config.model.pretrained_weights = ''
  resolved = config_lib.resolve_and_validate(config, num_visible_devices=1)
  assert resolved.data.image_root is None
  assert resolved.model.pretrained_weights is None
  assert resolved.data.source == 'digits'  # a set value is left alone
