"""DLSA's config: the authors' per-data-set values resolve from the data
set's name, explicit values win, and the new switches are checked."""

import pytest

from lcreg_jax import config as config_lib
from lcreg_jax import errors
from lcreg_jax.config import dlsa as dlsa_config
from lcreg_jax.config import validate


def _resolve(**overrides):
  c = config_lib.base_config()
  c.lock()
  for key, value in overrides.items():
    validate._set(c, key, value)  # pylint: disable=protected-access
  return config_lib.resolve_and_validate(c, num_visible_devices=1)


@pytest.mark.parametrize(
  'name,depth,lh,purity,balance',
  [
    ('digits', 1, 1.0, 0.02, 1.0),
    ('imagenet_lt', 1, 2.0, 0.02, 1.0),
    ('places_lt', 1, 1.0, 0.03, 2.0),
    ('inat2018', 3, 1.0, 0.02, 1.0),
  ],
)
def test_authors_values_per_data_set(name, depth, lh, purity, balance):
  d = _resolve(**{'data.name': name}).dlsa
  assert (d.depth, d.nll_weight, d.purity_weight, d.balance_weight) == (
    depth,
    lh,
    purity,
    balance,
  )


def test_explicit_values_win_over_the_preset():
  d = _resolve(
    **{'data.name': 'places_lt', 'dlsa.depth': 2, 'dlsa.purity_weight': 0.5}
  ).dlsa
  assert (d.depth, d.purity_weight, d.balance_weight) == (2, 0.5, 2.0)


def test_authors_form_is_the_default():
  d = dlsa_config.with_preset(dlsa_config.dlsa_config())
  assert (
    d.purity_type,
    d.pair_sampling,
    d.nll_weight_norm,
    d.nll_per_dim,
    d.flow_per_stage,
    d.cluster_prior_from,
    d.final_counts,
    d.flow_select_metric,
    d.flow_schedule,
    d.flow_grad_clip,
    d.flow_momentum,
    d.flow_lr,
    d.ema_decay,
  ) == (
    'neg_ce',
    'class_uniform',
    'classes',
    False,
    True,
    'all',
    'full',
    'authors',
    'constant',
    None,
    0.0,
    0.2,
    0.7,
  )


@pytest.mark.parametrize(
  'key,value',
  [
    ('dlsa.pair_sampling', 'uniform'),
    ('dlsa.nll_weight_norm', 'sum'),
    ('dlsa.cluster_prior_from', 'val'),
    ('dlsa.final_counts', 'routed'),
    ('dlsa.stage_prior_correction', 'auto'),
    ('dlsa.flow_select_metric', 'test'),
  ],
)
def test_new_choices_are_checked(key, value):
  with pytest.raises(errors.ConfigError, match=f'{key}={value!r} is not one'):
    _resolve(**{key: value})


@pytest.mark.parametrize(
  'key,value',
  [
    ('dlsa.nll_weight', -1.0),
    ('dlsa.select_min_purity', 1.5),
    ('dlsa.select_min_size', -1),
    ('dlsa.select_cap_factor', 0.0),
  ],
)
def test_new_ranges_are_checked(key, value):
  with pytest.raises(errors.ConfigError, match=key):
    _resolve(**{key: value})
