"""The load-and-predict API on the tiny run's workdir: its predictions are
the ones the run reported, the Figure-4 maps are distributions over the
latent categories, and bad requests are named with their fix."""

import json
import shutil

import numpy as np
import pytest

from lcreg_jax import errors
from lcreg_jax import inference


@pytest.fixture(scope='module')
def loaded(finished_run):
  workdir, _ = finished_run
  out = {}
  for stage in ('stage1', 'stage2'):
    model = inference.load_workdir(workdir, stage)
    images, labels = model.eval_split('test')
    report = json.loads((workdir / stage / 'report.json').read_text())
    out[stage] = (
      model,
      images,
      labels,
      model.predict(images, batch_size=64),
      report,
    )
  return out


@pytest.mark.slow
@pytest.mark.parametrize('stage', ['stage1', 'stage2'])
def test_predictions_are_those_the_run_reported(loaded, stage):
  model, images, labels, pred, report = loaded[stage]
  assert len(labels) == report['num_examples'] == len(pred['probs'])
  probs = pred['probs'].astype(np.float64)
  np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
  correct = probs.argmax(1) == labels
  assert correct.mean() == pytest.approx(report['top1'], abs=1e-12)
  per_class = [correct[labels == c].mean() for c in range(10)]
  np.testing.assert_allclose(
    per_class, report['per_class_accuracy'], atol=1e-12
  )
  nll = -np.log(probs[np.arange(len(labels)), labels]).mean()
  assert nll == pytest.approx(report['nll'], rel=1e-5)
  # The features are what the head classifies: logits = (f W + b) · scale.
  head = model.variables['params']['head']
  logits = (
    pred['features'].astype(np.float64) @ head['fc']['kernel']
    + head['fc']['bias']
  ) * head.get('scale', 1.0)
  np.testing.assert_allclose(pred['logits'], logits, rtol=1e-4, atol=1e-4)
  assert model.step == {'stage1': 6, 'stage2': 4}[stage]
  # Batch size does not change the outputs (the last batch is padded).
  again = model.predict(images[:50], batch_size=16)
  np.testing.assert_allclose(again['probs'], pred['probs'][:50], atol=1e-6)


@pytest.mark.slow
def test_assignment_maps_sum_to_one_and_match_the_reported_usage(loaded):
  model, images, labels, pred, report = loaded['stage2']
  maps = pred['assignments']
  m = model.config.model.latent.num_latents
  assert maps.shape[0] == len(images) and maps.shape[-1] == m
  assert maps.shape[1] * maps.shape[2] > 1  # a spatial map, H x W
  assert (maps >= 0).all()
  np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
  # The report counted, over all test positions, which latent wins each.
  wins = np.bincount(maps.argmax(-1).ravel(), minlength=m)
  np.testing.assert_array_equal(wins, report['latent_usage'])


@pytest.mark.slow
def test_bad_requests_are_named(finished_run, tmp_path):
  workdir, _ = finished_run
  with pytest.raises(errors.CheckpointError, match='is not the workdir'):
    inference.load_workdir(tmp_path)
  with pytest.raises(errors.ConfigError, match='DLSA routes'):
    inference.load_workdir(workdir, 'dlsa')
  with pytest.raises(errors.CheckpointError, match='best_on_val'):
    inference.load_workdir(workdir, 'stage2', which='best_on_val')
  # A post-hoc stage 2 trains no model.
  posthoc = tmp_path / 'posthoc'
  posthoc.mkdir()
  config = json.loads((workdir / 'config.json').read_text())
  config['stage2']['method'] = 'tau_norm'
  (posthoc / 'config.json').write_text(json.dumps(config))
  with pytest.raises(errors.ConfigError, match='post-hoc adjustment'):
    inference.load_workdir(posthoc, 'stage2')
  # Checkpoints that do not fit the model their fingerprint describes.
  copy = tmp_path / 'copy'
  shutil.copytree(workdir, copy)
  fp = copy / 'stage1' / 'checkpoints' / 'fingerprint.json'
  data = json.loads(fp.read_text())
  data['model']['latent']['num_latents'] += 1
  fp.write_text(json.dumps(data))
  with pytest.raises(errors.CheckpointError, match='does not fit the model'):
    inference.load_workdir(copy, 'stage1')
  model = inference.load_workdir(workdir, 'stage1')
  with pytest.raises(errors.DataError, match='trained on'):
    model.predict(np.zeros((2, 9, 9, 1)))
  with pytest.raises(errors.DataError, match='no images'):
    model.predict(np.zeros((0, 8, 8, 1)))
