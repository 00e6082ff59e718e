"""DLSA's classifiers: absent classes, selection on validation, no
validation."""

import jax
import numpy as np
import pytest

from lcreg_jax.config.dlsa import dlsa_config
from lcreg_jax.dlsa import classifiers


def test_inference_offset():
  off = classifiers.inference_offset(np.array([3, 0, 1]), True, 1e-12)
  np.testing.assert_allclose(off, [0.0, np.log(1e-12), 0.0], rtol=1e-6,
                             atol=1e-9)
  np.testing.assert_array_equal(
      classifiers.inference_offset(np.array([3, 0]), False, 1e-12), 0.0)


def _small_config(**kw):
  cfg = dlsa_config()
  cfg.classifier_steps, cfg.eval_every, cfg.classifier_batch_size = 60, 30, 32
  cfg.classifier_lr = 0.05
  cfg.update(kw)
  return cfg


@pytest.mark.parametrize('mask_absent', [True, False])
def test_classifier_with_absent_classes_trains(mask_absent, tmp_path):
  rng = np.random.default_rng(2)
  c, d = 5, 3
  means = 3 * rng.normal(size=(c, d))
  y = rng.choice([0, 2, 4], size=80)  # Classes 1 and 3 never appear.
  x = (means[y] + rng.normal(size=(80, d))).astype(np.float32)
  zp = np.concatenate([x, np.eye(c)[y] * 0.5], 1).astype(np.float32)
  yv = np.array([0, 2, 4, 1])
  xv = (means[yv]).astype(np.float32)
  zpv = np.concatenate([xv, np.zeros((4, c))], 1).astype(np.float32)
  model = classifiers.ClusterAidedClassifier(c)
  logs = []
  params, offset, info = classifiers.train_classifier(
      model, (x, zp), y, (xv, zpv), yv, num_classes=c,
      config=_small_config(mask_absent_classes=mask_absent),
      seed=0, workdir=str(tmp_path), pad_train=100, pad_val=10,
      log=logs.append)
  assert all(np.all(np.isfinite(l)) for l in jax.tree.leaves(params))
  assert set(params['params']) == {'lin_x', 'lin_zp'}
  probs = classifiers.predict_probs(model, params, offset, (xv, zpv), chunk=3)
  assert probs.shape == (4, c) and np.all(np.isfinite(probs))
  np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
  assert info['val_accuracy'] >= 0.75  # The three seen classes are easy.
  if mask_absent:
    assert probs[:, [1, 3]].max() < 1e-9
    assert np.argmax(probs[3]) != 1  # Unseen class never predicted.


def test_classifier_without_validation_keeps_the_last_parameters(tmp_path):
  rng = np.random.default_rng(3)
  x = rng.normal(size=(50, 2)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)
  model = classifiers.LinearClassifier(2)
  logs = []
  params, offset, info = classifiers.train_classifier(
      model, (x,), y, (np.zeros((0, 2), np.float32),), np.zeros(0, np.int32),
      num_classes=2, config=_small_config(), seed=0, workdir=str(tmp_path),
      log=logs.append)
  assert np.isnan(info['val_accuracy']) and info['best_step'] == 60
  assert any('no validation samples' in l for l in logs)
  acc = (classifiers.predict_probs(model, params, offset, (x,)).argmax(1) == y)
  assert acc.mean() > 0.9


def test_classifier_selects_on_validation(tmp_path):
  """A validation set that the training data contradicts: the selected
  parameters are those of the best validation check, not the last ones."""
  rng = np.random.default_rng(4)
  x = rng.normal(size=(200, 2)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)
  xv = rng.normal(size=(40, 2)).astype(np.float32)
  yv = (xv[:, 0] <= 0).astype(np.int32)   # the opposite rule
  cfg = _small_config(classifier_steps=90, eval_every=10)
  model = classifiers.LinearClassifier(2)
  params, offset, info = classifiers.train_classifier(
      model, (x,), y, (xv,), yv, num_classes=2, config=cfg, seed=0,
      workdir=str(tmp_path), log=lambda _: None)
  # Training on the opposite rule only lowers val accuracy: the first check
  # wins, and the parameters returned are the ones that scored it.
  assert info['best_step'] == 10
  last = classifiers.predict_probs(model, params, offset, (xv,)).argmax(1)
  assert info['val_accuracy'] == pytest.approx(np.mean(last == yv))


def test_prior_correction_and_its_choice_on_validation():
  from lcreg_jax.dlsa import run as run_lib
  # log(n_stage / n_full): 5/10, 1/4, absent -> log(tiny).
  np.testing.assert_allclose(
      classifiers.prior_correction(np.array([5, 1, 0]), np.array([10, 4, 3]),
                                   1e-12),
      np.log([0.5, 0.25, 1e-12]), rtol=1e-5)
  # Logits favour class 1; the correction favours class 0.
  corr = np.array([2.0, 0.0])
  zero = np.zeros(2)
  choose = lambda mode, y: run_lib.choose_prior_correction(
      mode, lambda off: np.tile([0.0, 1.0], (len(y), 1)) + off, zero, corr,
      np.array(y))
  assert choose('val', [0, 0, 1]) is True    # 2/3 with it, 1/3 without.
  assert choose('val', [1, 1, 0]) is False   # 1/3 with it, 2/3 without.
  assert choose('val', [0, 1]) is False      # A tie keeps it off.
  assert choose('val', []) is False          # No validation samples.
  assert choose('on', [1, 1]) is True and choose('off', [0, 0]) is False
