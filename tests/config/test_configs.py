"""Every file in configs/ is valid, declares no key of its own, and picks
the paper's settings."""

import glob
import importlib.util
import os

import pytest

from lcreg_jax import config as config_lib
from lcreg_jax.config import presets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
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
  # defer to epochs) and the clip that may be switched off.
  flat = config_lib.validate.flatten(resolved)
  unresolved = {k for k, v in flat.items() if v is None}
  assert unresolved <= {'stage1.steps', 'stage2.steps', 'stage2.las_power'}
  assert resolved.num_devices == 1


@pytest.mark.parametrize('path', [p for p in CONFIGS if 'cifar' in p],
                         ids=os.path.basename)
@pytest.mark.parametrize('imbalance', [10, 50, 100])
def test_cifar_configs_pick_a_stage2_row_for_each_imbalance(path, imbalance):
  config = _load(path)
  config.data.imbalance_factor = float(imbalance)
  resolved = config_lib.resolve_and_validate(config, num_visible_devices=1)
  row = presets.STAGE2_PRESETS[(config.stage2.preset, imbalance)]
  assert tuple(resolved.stage2[f] for f in presets.STAGE2_FIELDS) == row
  # The paper's M per data set (DESIGN §5).
  assert config.model.latent.num_latents == (
      50 if config.data.num_classes == 100 else 40)
