"""Validation of the stage-1 baseline keys (docs/method.md §8): each bad value is
named with its fix before any data is read."""

import ml_collections
import pytest

from lcreg_jax import config as config_lib
from lcreg_jax import errors


def _config(**s1):
  c = config_lib.base_config()
  isda = s1.pop('class_isda', None)
  latent = s1.pop('latent', True)
  c.model.head = s1.pop('head', 'linear')
  c.model.normed_scale = s1.pop('normed_scale', 30.0)
  if 'stage2_method' in s1:
    c.stage2.method = s1.pop('stage2_method')
  if isda is not None:
    c.model.class_isda = isda
  c.model.latent.enabled = latent
  c.stage1.update(**s1)
  return c


def _error(c) -> str:
  with pytest.raises(errors.ConfigError) as e:
    config_lib.resolve_and_validate(c, num_visible_devices=1)
  return str(e.value)


@pytest.mark.parametrize(
  'changes,what',
  [
    (
      dict(loss='cross_entropy'),
      "stage1.loss='cross_entropy' is not one of "
      'ce, focal, ldam, balanced_softmax, logit_adjusted',
    ),
    (
      dict(reweight='cb'),
      "stage1.reweight='cb' is not one of none, effective_number, drw",
    ),
    (
      dict(class_isda='diag', latent=False, mixup_alpha=0.0),
      "model.class_isda='diag' is not one of none, diagonal, full",
    ),
    (dict(focal_gamma=-0.5), 'stage1.focal_gamma=-0.5 must be a number >= 0'),
    (
      dict(reweight_beta=1.0),
      'stage1.reweight_beta=1.0 must be a number in [0, 1)',
    ),
    (dict(reweight_beta=-0.1), 'stage1.reweight_beta=-0.1 must be'),
    (dict(ldam_scale=0.0), 'stage1.ldam_scale=0.0 must be a number > 0'),
    (dict(ldam_max_margin=-1.0), 'stage1.ldam_max_margin=-1.0 must be'),
    (dict(la_tau=float('nan')), 'stage1.la_tau=nan must be a finite number'),
    (
      dict(reweight='drw', drw_epoch=200.0),
      'stage1.reweight=drw switches '
      'the weights on at stage1.drw_epoch=200, but stage 1 ends at epoch 200',
    ),
    (
      dict(class_isda='diagonal', mixup_alpha=0.0),
      'set model.latent.enabled=False',
    ),
    (
      dict(class_isda='diagonal', latent=False),
      'a mixed image belongs to no one class: set stage1.mixup_alpha=0',
    ),
    (
      dict(class_isda='full', latent=False, mixup_alpha=0.0, loss='focal'),
      "stage1.loss='focal': set stage1.loss=ce",
    ),
    (dict(head='cosine'), "model.head='cosine' is not one of linear, normed"),
    (
      dict(head='normed', normed_scale=0.0),
      'model.normed_scale=0.0 must be a number > 0',
    ),
    (
      dict(head='normed', loss='ldam', ldam_scale=16.0),
      'by model.normed_scale=30 in evaluation: set both to the same s',
    ),
    (
      dict(head='normed', class_isda='diagonal', latent=False, mixup_alpha=0.0),
      'the cosine head has no such form',
    ),
    (
      dict(head='normed', stage2_method='tau_norm'),
      'model.head=normed already uses unit columns',
    ),
  ],
)
def test_bad_stage1_loss_settings_are_named_with_a_fix(changes, what):
  msg = _error(_config(**changes))
  assert what in msg, msg
  assert 'nothing was read or trained' in msg


@pytest.mark.parametrize(
  'changes',
  [
    dict(loss='ldam', reweight='drw'),
    dict(loss='ldam', reweight='drw', head='normed'),
    dict(loss='ldam', reweight='effective_number', mixup_alpha=0.0),
    dict(loss='focal', focal_gamma=0.0, reweight='drw', drw_epoch=0.0),
    dict(loss='logit_adjusted', la_tau=0.0),
    dict(class_isda='diagonal', latent=False, mixup_alpha=0.0, reweight='drw'),
  ],
)
def test_good_combinations_pass(changes):
  r = config_lib.resolve_and_validate(_config(**changes), num_visible_devices=1)
  assert r.stage1.loss == changes.get('loss', 'ce')


def test_drw_switch_after_the_last_step_is_caught_with_the_data_size():
  # steps given: the epoch count is known only with the data's size.
  info = ml_collections.ConfigDict(
    dict(split_sizes={'train': 1280}, name='tiny')
  )
  c = _config(reweight='drw', drw_epoch=3.0, steps=30)  # 10 steps/epoch
  r = config_lib.resolve_and_validate(c, num_visible_devices=1)
  with pytest.raises(
    errors.ConfigError, match=r'at step 30 .* stage 1 has 30 steps.*below 3'
  ):
    config_lib.validate_against_data(r, info)
  c = _config(reweight='drw', drw_epoch=2.9, steps=30)
  config_lib.validate_against_data(
    config_lib.resolve_and_validate(c, num_visible_devices=1), info
  )
