"""run_dlsa end to end on synthetic long-tailed features: routing counts,
accuracy, never reading test labels, the switches, and exact resume."""

import json
import os

import numpy as np
import pytest

from lcreg_jax.config.dlsa import dlsa_config, with_preset
from lcreg_jax.dlsa import DLSAResult, run_dlsa
from tests import killing

pytestmark = pytest.mark.slow


def _long_tailed(rng, counts, means, scale=1.0):
  y = np.repeat(np.arange(len(counts)), counts)
  x = means[y] + scale * rng.normal(size=(y.size, means.shape[1]))
  perm = rng.permutation(y.size)
  return x[perm].astype(np.float32), y[perm]


@pytest.fixture(scope='module')
def synthetic():
  rng = np.random.default_rng(0)
  c, d = 4, 8
  means = 2.5 * rng.normal(size=(c, d))
  return (
    _long_tailed(rng, [400, 150, 60, 25], means),
    _long_tailed(rng, [40] * c, means),
    _long_tailed(rng, [100] * c, means),
    c,
  )


def _config(**kw):
  cfg = with_preset(dlsa_config())
  cfg.update(
    dict(
      num_clusters=16,
      flow_steps=60,
      flow_batch_size=64,
      eval_every=30,
      flow_eval_every=30,
      classifier_epochs=8,
      classifier_eval_epochs=2,
      classifier_batch_size=64,
      classifier_lr=0.1,
      depth=2,
      eval_chunk=1024,
    )
  )
  cfg.update(kw)
  return cfg


def _run(synthetic, workdir, cfg=None, test=None, **kw):
  train, val, test_default, c = synthetic
  logs = []
  res = run_dlsa(
    cfg or _config(),
    train=train,
    val=val,
    test=test or test_default,
    num_classes=c,
    workdir=str(workdir),
    log=logs.append,
    **kw,
  )
  return res, logs


@pytest.fixture(scope='module')
def dlsa_run(synthetic, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('dlsa')
  res, logs = _run(synthetic, workdir)
  return res, str(workdir), logs


def test_run_dlsa_end_to_end(synthetic, dlsa_run):
  _, _, (xt, yt), c = synthetic
  res, workdir, logs = dlsa_run
  assert isinstance(res, DLSAResult)
  assert res.test_probs.shape == (yt.size, c)
  assert res.test_probs.dtype == np.float32
  np.testing.assert_allclose(res.test_probs.sum(1), 1, rtol=1e-5)
  assert set(np.unique(res.test_stage)) <= {0, 1, 2}
  rep = res.stage_report
  assert sorted(rep) == [0, 1, 2]
  assert sum(r['share'] for r in rep.values()) == pytest.approx(1.0)
  # 635 training samples: ceil(0.3 · 635) = 191, ceil(0.3 · 444) = 134.
  assert [rep[s]['train_routed'] for s in range(3)] == [191, 134, 310]
  for s, r in rep.items():
    on = res.test_stage == s
    assert r['share'] == pytest.approx(on.mean())
    if on.any():
      assert r['accuracy'] == pytest.approx(
        np.mean(res.test_probs[on].argmax(1) == yt[on])
      )
  # Per class: the shares of its samples each stage takes, and its top-1
  # there, against NumPy on the returned stages.
  for s, r in rep.items():
    on = res.test_stage == s
    for k in range(c):
      in_k = yt == k
      assert r['test_share_by_class'][k] == pytest.approx(on[in_k].mean())
      hit = res.test_probs[on & in_k].argmax(1) == k
      assert r['test_accuracy_by_class'][k] == (
        pytest.approx(hit.mean()) if hit.size else None
      )
    ytr = synthetic[0][1]
    routed = res.train_stage == s
    assert r['train_share_by_class'] == pytest.approx(
      [routed[ytr == k].mean() for k in range(c)]
    )
  acc = np.mean(res.test_probs.argmax(1) == yt)
  assert acc > 0.85 and res.val_accuracy > 0.85  # Chance is 0.25.
  # A flow per stage (flow_per_stage=True), three classifiers and the
  # depth-0 control, each with its checkpoints and events.
  assert sorted(os.listdir(workdir)) == [
    'classifier_0',
    'classifier_1',
    'classifier_depth0',
    'classifier_final',
    'flow_0',
    'flow_1',
  ]
  assert [rep[s]['flow_n_train'] for s in range(2)] == [635, 444]
  assert res.control_test_probs.shape == res.test_probs.shape
  for name in os.listdir(workdir):
    assert os.path.exists(
      os.path.join(workdir, name, 'checkpoints', 'fingerprint.json')
    )
  assert any('selected step' in l for l in logs)


def test_run_dlsa_never_looks_at_test_labels(synthetic, dlsa_run, tmp_path):
  _, _, (xt, yt), _ = synthetic
  shuffled = np.random.default_rng(5).permutation(yt)
  res, _ = _run(synthetic, tmp_path, test=(xt, shuffled))
  np.testing.assert_array_equal(res.test_probs, dlsa_run[0].test_probs)
  np.testing.assert_array_equal(res.test_stage, dlsa_run[0].test_stage)


def test_killed_dlsa_resumes_exactly(synthetic, dlsa_run, tmp_path):
  """Killed inside the flow's training, after its checkpoint at step 40."""
  kill_in = 'flow_0'
  with pytest.raises(killing.Kill):
    _run(
      synthetic,
      tmp_path,
      hooks=[killing.kill_at(kill_in, 45)],
      checkpoint_every=20,
    )
  steps = sorted(os.listdir(tmp_path / kill_in / 'checkpoints'))
  assert steps == ['20', '40', 'fingerprint.json']
  res, _ = _run(synthetic, tmp_path, checkpoint_every=20)
  np.testing.assert_array_equal(res.test_probs, dlsa_run[0].test_probs)


def test_run_dlsa_switches(synthetic, tmp_path):
  _, _, (xt, yt), _ = synthetic
  # Every deviation from the authors' form at once (today's behaviour).
  cfg = _config(
    use_flow_latent=True,
    flow_per_stage=False,
    flow_select_metric='heldout',
    purity_type='overlap',
    flow_schedule='cosine',
    final_balanced_softmax=False,
    standardize=False,
    flow_grad_clip=1.0,
    pair_sampling='sample_uniform',
    nll_weight_norm='samples',
    nll_per_dim=True,
    flow_separate_passes=False,
    cluster_prior_from='routed',
    final_counts='remaining',
    stage_prior_correction='val',
    depth0_control=False,
    classifier_steps=120,
    classifier_optimizer='adamw',
    classifier_lr=0.05,
    classifier_init='zeros',
    final_classifier='linear',
    flow_eval_every=30,
    select_cap=None,
    made_out_scale=1e-2,
    bn_unbiased_var=False,
  )
  res, logs = _run(synthetic, tmp_path, cfg, select_metric='image_mean')
  rep = res.stage_report
  assert [rep[s]['train_routed'] for s in range(3)] == [191, 134, 310]
  # One flow, trained on all 635 samples, ranks both stages.
  assert [rep[s]['flow_n_train'] for s in range(2)] == [635, 635]
  assert not os.path.isdir(os.path.join(str(tmp_path), 'flow_1'))
  assert res.control_test_probs is None
  assert all(isinstance(rep[s]['prior_correction'], bool) for s in range(2))
  assert np.mean(res.test_probs.argmax(1) == yt) > 0.85


def _standardized(x_train, x):
  sd = x_train.std(0)
  return (x - x_train.mean(0)) / np.where(sd > 1e-6, sd, 1.0)


def test_stage_inputs_flows_priors_and_counts(synthetic, tmp_path, monkeypatch):
  """Instrumented run: what each flow, prior and classifier is given."""
  from lcreg_jax.dlsa import classifiers, flow_training, routing

  (xtr, ytr), _, _, c = synthetic
  calls = {'flow': [], 'prior': [], 'clf': []}
  real_flow = flow_training.train_flow
  real_prior = routing.cluster_prior_matrix
  real_clf = classifiers.train_classifier
  monkeypatch.setattr(
    flow_training,
    'train_flow',
    lambda x, *a, **k: (
      calls['flow'].append(np.array(x)),
      real_flow(x, *a, **k),
    )[1],
  )
  monkeypatch.setattr(
    routing,
    'cluster_prior_matrix',
    lambda cl, y, *a: (
      calls['prior'].append(np.array(y)),
      real_prior(cl, y, *a),
    )[1],
  )
  monkeypatch.setattr(
    classifiers,
    'train_classifier',
    lambda m, xs, y, *a, **k: (
      calls['clf'].append((k['name'], np.array(y), k.get('prior_counts'))),
      real_clf(m, xs, y, *a, **k),
    )[1],
  )
  cfg = _config(flow_steps=30, classifier_epochs=3)
  res, _ = _run(synthetic, tmp_path, cfg)
  xs = _standardized(xtr, xtr).astype(np.float32)
  # Flow k sees exactly the training samples no stage < k took.
  assert len(calls['flow']) == 2
  np.testing.assert_allclose(calls['flow'][0], xs, rtol=1e-6)
  np.testing.assert_allclose(
    calls['flow'][1], xs[res.train_stage != 0], rtol=1e-6
  )
  # Both cluster priors count all 635 training samples (authors' form).
  for y in calls['prior']:
    np.testing.assert_array_equal(y, ytr)
  full = np.bincount(ytr, minlength=c)
  by_name = {name: (y, counts) for name, y, counts in calls['clf']}
  # Stages: balanced softmax with the routed subset's own counts.
  for s in range(2):
    y, counts = by_name[f'classifier_{s}']
    np.testing.assert_array_equal(y, ytr[res.train_stage == s])
    assert counts is None
  # Final: the remaining samples, but the full training counts.
  y, counts = by_name['classifier_final']
  np.testing.assert_array_equal(y, ytr[res.train_stage == 2])
  np.testing.assert_array_equal(counts, full)
  # Control: every training sample, full counts.
  y, counts = by_name['classifier_depth0']
  np.testing.assert_array_equal(y, ytr)
  np.testing.assert_array_equal(counts, full)

  # Under the switches the prior counts only the routed samples and the
  # final classifier's softmax its own remaining counts.
  calls.update(prior=[], clf=[], flow=[])
  _run(
    synthetic,
    tmp_path / 'switched',
    _config(
      flow_steps=30,
      classifier_epochs=3,
      cluster_prior_from='routed',
      final_counts='remaining',
      depth0_control=False,
    ),
  )
  assert [y.size for y in calls['prior']] == [191, 134]
  assert {name: counts for name, _, counts in calls['clf']} == {
    'classifier_0': None,
    'classifier_1': None,
    'classifier_final': None,
  }


def test_depth0_is_the_plain_balanced_softmax_classifier(
  synthetic, dlsa_run, tmp_path
):
  """depth = 0 equals the control of a routed run, and a linear classifier
  trained directly with balanced softmax on the full counts."""
  from lcreg_jax.dlsa import classifiers

  (xtr, ytr), (xv, yv), (xt, _), c = synthetic
  res0, _ = _run(synthetic, tmp_path / 'd0', _config(depth=0))
  assert sorted(res0.stage_report) == [0]
  assert np.all(res0.test_stage == 0)
  np.testing.assert_array_equal(res0.test_probs, res0.control_test_probs)
  np.testing.assert_allclose(
    res0.test_probs, dlsa_run[0].control_test_probs, atol=1e-6
  )
  cfg = _config(depth=0)
  model = classifiers.final_model(cfg, c)
  st = lambda x: _standardized(xtr, x).astype(np.float32)
  params, offset, _ = classifiers.train_classifier(
    model,
    (st(xtr),),
    ytr,
    (st(xv),),
    yv,
    num_classes=c,
    config=cfg,
    seed=cfg.seed * 1000 + 1 - 1,
    workdir=str(tmp_path / 'direct'),
    prior_counts=np.bincount(ytr, minlength=c),
    pad_to=(ytr.size, yv.size),
    log=lambda _: None,
    name='classifier_final',
  )
  direct = classifiers.predict_probs(
    model, params, offset, (st(xt),), cfg.eval_chunk
  )
  np.testing.assert_allclose(res0.test_probs, direct, atol=1e-6)


def test_the_final_classifier_trained_on_all_samples(synthetic, tmp_path):
  """final_trained_on='all' (this project's switch) trains the final
  classifier on every training sample, yet it still predicts only what no
  stage took."""
  res, _ = _run(synthetic, tmp_path, _config(depth=1, final_trained_on='all'))
  path = tmp_path / 'classifier_final' / 'checkpoints' / 'fingerprint.json'
  with open(path) as f:
    fingerprint = json.load(f)
  n = synthetic[0][1].size
  assert fingerprint['n_train'] == n
  assert res.stage_report[1]['train_routed'] == n - 191  # ceil(0.3 · 635)
  assert 0 < (res.test_stage == 1).mean() < 1
