"""Every baseline config loads and validates, on the default data set and
on another one picked after the ':'; the decoupled ones can share the CE
run's stage 1."""

import glob
import os
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import pytest

from lcreg_jax import config as config_lib
from lcreg_jax.config import validate
from tests.config.test_configs import ROOT

BASELINES = sorted(
  p
  for p in glob.glob(os.path.join(ROOT, 'configs', 'baselines', '*.py'))
  if not os.path.basename(p).startswith('_')
)
NAMES = [os.path.basename(p)[:-3] for p in BASELINES]
DECOUPLED = ('crt', 'lws', 'tau_norm', 'posthoc_la')


def _load(name, data=None):
  """Through ml_collections' own flag, as `--config=<file>[:<data>]`."""
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=values)
  path = os.path.join(ROOT, 'configs', 'baselines', f'{name}.py')
  values(['prog', f'--config={path}' + (f':{data}' if data else '')])
  return values.config


def test_every_baseline_has_a_config():
  assert set(NAMES) == {
    'ce',
    'focal',
    'ldam_drw',
    'balanced_softmax',
    'logit_adjusted',
    'posthoc_la',
    'crt',
    'tau_norm',
    'lws',
    'isda',
    'mislas',
    'lcreg',
    'lcreg_dlsa',
  }


@pytest.mark.parametrize('data', [None, 'cifar10_lt'])
@pytest.mark.parametrize('name', NAMES)
def test_baseline_config_loads_and_validates(name, data):
  config = _load(name, data)
  assert config.data.name == (data or 'fashion_mnist').replace('_lt', '')
  resolved = config_lib.resolve_and_validate(config, num_visible_devices=1)
  # The same held-out validation split everywhere.
  assert validate.has_val_split(resolved.data)
  assert resolved.data.val_per_class == 20
  if name in DECOUPLED:
    assert resolved.stage2.enabled and resolved.stage2.method == name
    # Same model and data as ce: its stage-1 checkpoint fits.
    ce = config_lib.resolve_and_validate(
      _load('ce', data), num_visible_devices=1
    )
    assert resolved.model.to_dict() == ce.model.to_dict()
    assert resolved.data.to_dict() == ce.data.to_dict()
  else:
    assert resolved.stage2.method == 'mislas'


def test_an_unknown_data_set_names_the_choices():
  with pytest.raises(Exception, match='cifar10_lt'):
    _load('crt', 'cifar11_lt')


def test_baselines_import_what_they_share_from_any_directory(tmp_path):
  """A baseline imports lcreg_jax.config.baselines (no runpy of a sibling
  file), so `--config=<path>:<data>` loads it from any working directory."""
  for path in BASELINES:
    with open(path) as f:
      assert 'runpy' not in f.read(), path
  script = (
    'from absl import flags\n'
    'from ml_collections import config_flags\n'
    'v = flags.FlagValues()\n'
    "config_flags.DEFINE_config_file('config', None, flag_values=v)\n"
    f"v(['prog', '--config={BASELINES[0]}:cifar10_lt'])\n"
    'print(v.config.data.name)\n'
  )
  env = dict(os.environ, PYTHONPATH=ROOT)
  res = subprocess.run(
    [sys.executable, '-c', script],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    check=False,
  )
  assert res.returncode == 0, res.stderr[-2000:]
  assert res.stdout.split()[-1] == 'cifar10'
