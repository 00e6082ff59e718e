import glob
import importlib.util
import os

import pytest

from lcreg_jax import config_base
from lcreg_jax import retrain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))


def _load(path):
  spec = importlib.util.spec_from_file_location('cfg', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_config_is_valid_and_has_only_base_keys(path):
  config = _load(path)
  config_base.validate(config)
  base = config_base.base_config()
  # A config file may change values but must not invent keys that no code
  # reads (ml_collections would accept them silently inside get_config).
  assert set(config.to_dict()) == set(base.to_dict())
  for section in ('data', 'model', 'stage1', 'stage2', 'eval', 'dlsa'):
    assert set(config[section].to_dict()) == set(base[section].to_dict())


@pytest.mark.parametrize('path', [p for p in CONFIGS if 'cifar' in p],
                         ids=os.path.basename)
@pytest.mark.parametrize('imbalance', [10, 50, 100])
def test_cifar_configs_pick_a_stage2_row_for_each_imbalance(path, imbalance):
  config = _load(path)
  settings = retrain.stage2_settings(config.stage2, imbalance)
  assert settings == dict(zip(
      ('las_head', 'las_tail', 'shift_bn', 'lr_factor'),
      retrain.STAGE2_PRESETS[(config.stage2.preset, imbalance)]))
  # The paper's M per data set (DESIGN §5).
  assert config.model.latent.num_latents == (
      50 if config.data.num_classes == 100 else 40)
