"""DLSA's classifiers: absent classes, selection on validation, no
validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcreg_jax import losses
from lcreg_jax.config.dlsa import dlsa_config
from lcreg_jax.dlsa import classifiers


def test_inference_offset():
  off = classifiers.inference_offset(np.array([3, 0, 1]), True, 1e-12)
  np.testing.assert_allclose(
    off, [0.0, np.log(1e-12), 0.0], rtol=1e-6, atol=1e-9
  )
  np.testing.assert_array_equal(
    classifiers.inference_offset(np.array([3, 0]), False, 1e-12), 0.0
  )


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
    model,
    (x, zp),
    y,
    (xv, zpv),
    yv,
    num_classes=c,
    config=_small_config(mask_absent_classes=mask_absent),
    seed=0,
    workdir=str(tmp_path),
    pad_to=(100, 10),
    log=logs.append,
  )
  assert all(np.all(np.isfinite(l)) for l in jax.tree.leaves(params))
  assert set(params['params']) == {'lin_x', 'lin_zp'}
  probs = classifiers.predict_probs(model, params, offset, (xv, zpv), chunk=3)
  assert probs.shape == (4, c) and np.all(np.isfinite(probs))
  np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
  assert info['val_score'] >= 0.75  # The three seen classes are easy.
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
    model,
    (x,),
    y,
    (np.zeros((0, 2), np.float32),),
    np.zeros(0, np.int32),
    num_classes=2,
    config=_small_config(),
    seed=0,
    workdir=str(tmp_path),
    log=logs.append,
  )
  assert info['val_score'] is None and info['best_step'] == 60
  assert any('no validation samples' in l for l in logs)
  acc = classifiers.predict_probs(model, params, offset, (x,)).argmax(1) == y
  assert acc.mean() > 0.9


def test_classifier_selects_on_validation(tmp_path):
  """A validation set that the training data contradicts: the selected
  parameters are those of the best validation check, not the last ones."""
  rng = np.random.default_rng(4)
  x = rng.normal(size=(200, 2)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)
  xv = rng.normal(size=(40, 2)).astype(np.float32)
  yv = (xv[:, 0] <= 0).astype(np.int32)  # the opposite rule
  cfg = _small_config(classifier_steps=90, eval_every=10)
  model = classifiers.LinearClassifier(2)
  params, offset, info = classifiers.train_classifier(
    model,
    (x,),
    y,
    (xv,),
    yv,
    num_classes=2,
    config=cfg,
    seed=0,
    workdir=str(tmp_path),
    log=lambda _: None,
  )
  # Training on the opposite rule only lowers val accuracy: the first check
  # wins, and the parameters returned are the ones that scored it.
  assert info['best_step'] == 10
  last = classifiers.predict_probs(model, params, offset, (xv,)).argmax(1)
  assert info['val_score'] == pytest.approx(
    losses.class_mean_top1(np.eye(2)[last], yv, 2)
  )


def test_prior_correction_and_its_choice_on_validation():
  from lcreg_jax.dlsa import run as run_lib

  # log(n_stage / n_full): 5/10, 1/4, absent -> log(tiny).
  np.testing.assert_allclose(
    classifiers.prior_correction(
      np.array([5, 1, 0]), np.array([10, 4, 3]), 1e-12
    ),
    np.log([0.5, 0.25, 1e-12]),
    rtol=1e-5,
  )
  # Logits favour class 1; the correction favours class 0.
  corr = np.array([2.0, 0.0])
  zero = np.zeros(2)
  choose = lambda mode, y: run_lib.choose_prior_correction(
    mode,
    lambda off: np.tile([0.0, 1.0], (len(y), 1)) + off,
    zero,
    corr,
    np.array(y),
    2,
    'image_mean',
  )
  assert choose('val', [0, 0, 1]) is True  # 2/3 with it, 1/3 without.
  assert choose('val', [1, 1, 0]) is False  # 1/3 with it, 2/3 without.
  assert choose('val', [0, 1]) is False  # A tie keeps it off.
  assert choose('val', []) is False  # No validation samples.
  assert choose('on', [1, 1]) is True and choose('off', [0, 0]) is False


def test_prior_correction_choice_follows_the_select_metric():
  """Unbalanced val split (one class-0 row, four class-1 rows): without the
  correction every row is called 1 (top-1 4/5, class mean 1/2); with it the
  class-0 row and two class-1 rows are right (3/5, 3/4). Image mean keeps
  it off, class mean turns it on."""
  from lcreg_jax.dlsa import run as run_lib

  logits = np.array([[0, 1], [0, 1], [0, 1], [0, 3], [0, 3]], np.float64)
  y = np.array([0, 1, 1, 1, 1])
  choose = lambda metric: run_lib.choose_prior_correction(
    'val',
    lambda off: logits + off,
    np.zeros(2),
    np.array([2.0, 0.0]),
    y,
    2,
    metric,
  )
  assert choose('image_mean') is False
  assert choose('class_mean') is True


def test_checkpoint_choice_follows_the_select_metric():
  """Two candidates on the same unbalanced split: 'a' calls everything the
  majority class, 'b' gets each class half right. Class mean keeps b."""
  y = np.array([0, 1, 1, 1, 1, 1])
  preds = {'a': np.ones(6, int), 'b': np.array([0, 1, 1, 1, 0, 0])}
  from lcreg_jax import loop

  for metric, kept in (('image_mean', 'a'), ('class_mean', 'b')):
    evaluate = classifiers._selection(
      lambda p, off, xs: np.eye(2)[preds[p]],
      None,
      (),
      y,
      2,
      metric,
    )
    state = loop.Selection.start(('a',), 'a')
    state, _ = evaluate(1, state)
    state, _ = evaluate(2, state.replace(train=('b',)))
    assert state.best == kept, metric


def _step_setup(model, d=3, c=4, n=5, batch=4, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = np.array([0, 1, 1, 3, 1][:n], np.int32)
  counts = np.bincount(y, minlength=c).astype(np.float32)
  cfg = dlsa_config()
  cfg.classifier_batch_size = batch
  hp = classifiers.ClassifierHparams.from_config(cfg)
  tx, step, _ = classifiers.classifier_fns(model, hp)
  params = model.init(jax.random.PRNGKey(seed), x[:1])
  return x, y, counts, tx, step, params


def _numpy_bsm_sgd(w, b, x, y, counts, lr):
  """One SGD step of the mean balanced-softmax CE, float64 by hand."""
  x = x.astype(np.float64)
  adj = x @ w + b + np.log(counts + 1e-12)
  p = np.exp(adj - adj.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  g = (p - np.eye(w.shape[1])[y]) / len(y)
  return w - lr * x.T @ g, b - lr * g.sum(0)


def test_sgd_step_on_the_short_last_batch_matches_numpy():
  """The authors' default: plain SGD at lr 0.01. n = 5, batch 4: the
  epoch's second batch holds one real row and three padded ones, which
  must not count (PyTorch steps on the short batch's mean)."""
  model = classifiers.LinearClassifier(4)
  x, y, counts, tx, step, params = _step_setup(model)
  w = np.asarray(params['params']['lin_x']['kernel'], np.float64)
  b = np.asarray(params['params']['lin_x']['bias'], np.float64)
  batches, per_epoch = classifiers.epoch_batches(7, 5, 4)
  assert per_epoch == 2
  it = batches(0)
  train = (params, tx.init(params))
  for _ in range(2):
    idx, num_real = next(it)
    rows = np.asarray(idx)[:num_real]
    train, _ = step(
      train,
      (idx, num_real),
      (jnp.asarray(x),),
      jnp.asarray(y),
      5,
      jnp.asarray(counts),
    )
    params = train[0]
    w, b = _numpy_bsm_sgd(w, b, x[rows], y[rows], counts, 0.01)
    np.testing.assert_allclose(
      params['params']['lin_x']['kernel'], w, rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
      params['params']['lin_x']['bias'], b, rtol=1e-5, atol=1e-7
    )
  assert num_real == 1


def test_epoch_batches_cover_each_row_once_and_resume():
  batches, per_epoch = classifiers.epoch_batches(3, 10, 4)
  assert per_epoch == 3
  it = batches(0)
  seen = [next(it) for _ in range(6)]
  for e in range(2):
    rows = np.concatenate(
      [np.asarray(i)[:k] for i, k in seen[3 * e : 3 * e + 3]]
    )
    assert sorted(rows) == list(range(10))
  assert [int(k) for _, k in seen] == [4, 4, 2] * 2
  assert not np.array_equal(seen[0][0], seen[3][0])  # a fresh shuffle
  # A run resumed after step 4 reads steps 5 and 6 as the full run did.
  resumed = batches(4)
  for i in (4, 5):
    np.testing.assert_array_equal(next(resumed)[0], seen[i][0])


def test_lin_lin_final_classifier_sums_two_torch_initialised_layers():
  d, c = 16, 5
  model = classifiers.LinLinClassifier(c)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, d)))['params']
  assert set(params) == {'lin_x', 'lin_z'}
  bound = 1 / np.sqrt(d)
  for layer in params.values():
    for leaf in (layer['kernel'], layer['bias']):
      assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.5 * bound
  assert not np.allclose(params['lin_x']['kernel'], params['lin_z']['kernel'])
  x = np.random.default_rng(0).normal(size=(3, d))
  expected = sum(
    x @ np.asarray(l['kernel'], np.float64) + l['bias'] for l in params.values()
  )
  np.testing.assert_allclose(
    model.apply({'params': params}, x), expected, rtol=1e-5, atol=1e-6
  )
  cfg = dlsa_config()
  assert isinstance(
    classifiers.final_model(cfg, c), classifiers.LinLinClassifier
  )
  cfg.final_classifier, cfg.classifier_init = 'linear', 'zeros'
  single = classifiers.final_model(cfg, c)
  p = single.init(jax.random.PRNGKey(0), jnp.zeros((1, d)))['params']
  assert set(p) == {'lin_x'} and not np.any(p['lin_x']['kernel'])
