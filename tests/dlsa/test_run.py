"""run_dlsa end to end on synthetic long-tailed features: routing counts,
accuracy, never reading test labels, the switches, and exact resume."""

import os

import numpy as np
import pytest

from lcreg_jax.config.dlsa import dlsa_config
from lcreg_jax.dlsa import DLSAResult, run_dlsa

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
  return (_long_tailed(rng, [400, 150, 60, 25], means),
          _long_tailed(rng, [40] * c, means),
          _long_tailed(rng, [100] * c, means), c)


def _config(**kw):
  cfg = dlsa_config()
  cfg.update(dict(num_clusters=16, flow_steps=60, flow_batch_size=64,
                  eval_every=30, classifier_steps=120,
                  classifier_batch_size=64, classifier_lr=0.05, depth=2,
                  eval_chunk=1024))
  cfg.update(kw)
  return cfg


def _run(synthetic, workdir, cfg=None, test=None, **kw):
  train, val, test_default, c = synthetic
  logs = []
  res = run_dlsa(cfg or _config(), train=train, val=val,
                 test=test or test_default, num_classes=c,
                 workdir=str(workdir), log=logs.append, **kw)
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
          np.mean(res.test_probs[on].argmax(1) == yt[on]))
  acc = np.mean(res.test_probs.argmax(1) == yt)
  assert acc > 0.85 and res.val_accuracy > 0.85  # Chance is 0.25.
  # One flow (flow_per_stage=False), three classifiers, each with its
  # checkpoints and events.
  assert sorted(os.listdir(workdir)) == [
      'classifier_0', 'classifier_1', 'classifier_final', 'flow_0']
  for name in os.listdir(workdir):
    assert os.path.exists(os.path.join(workdir, name, 'checkpoints',
                                       'fingerprint.json'))
  assert any('selected step' in l for l in logs)


def test_run_dlsa_never_looks_at_test_labels(synthetic, dlsa_run, tmp_path):
  _, _, (xt, yt), _ = synthetic
  shuffled = np.random.default_rng(5).permutation(yt)
  res, _ = _run(synthetic, tmp_path, test=(xt, shuffled))
  np.testing.assert_array_equal(res.test_probs, dlsa_run[0].test_probs)
  np.testing.assert_array_equal(res.test_stage, dlsa_run[0].test_stage)


class _Kill(Exception):
  pass


def test_killed_dlsa_resumes_exactly(synthetic, dlsa_run, tmp_path):
  """Killed inside the flow's training, after its checkpoint at step 40."""
  kill_in = 'flow_0'
  def hook(name, step, state):
    if name == kill_in and step == 45:
      raise _Kill()

  with pytest.raises(_Kill):
    _run(synthetic, tmp_path, hooks=[hook], checkpoint_every=20)
  steps = sorted(os.listdir(tmp_path / kill_in / 'checkpoints'))
  assert steps == ['20', '40', 'fingerprint.json']
  res, _ = _run(synthetic, tmp_path, checkpoint_every=20)
  np.testing.assert_array_equal(res.test_probs, dlsa_run[0].test_probs)


def test_run_dlsa_switches(synthetic, tmp_path):
  _, _, (xt, yt), _ = synthetic
  cfg = _config(use_flow_latent=True, flow_per_stage=True,
                flow_select_metric='heldout', purity_type='overlap',
                flow_schedule='constant', final_balanced_softmax=False,
                standardize=False, flow_grad_clip=None)
  res, logs = _run(synthetic, tmp_path, cfg)
  rep = res.stage_report
  assert [rep[s]['train_routed'] for s in range(3)] == [191, 134, 310]
  # A second flow, trained on the 444 samples stage 0 left.
  assert any(l.startswith('flow_1: n=444 ') for l in logs)
  assert os.path.isdir(os.path.join(str(tmp_path), 'flow_1'))
  assert np.mean(res.test_probs.argmax(1) == yt) > 0.85
