"""Best-on-validation selection: the step chosen is the first one with the
highest validation top-1 among the evaluated steps, its test metrics are
those of that step's parameters, and a killed run resumes to the same
choice."""

import json

import jax
import numpy as np
import pytest

from lcreg_jax import config as config_lib
from lcreg_jax import inference
from lcreg_jax import parallel
from lcreg_jax import stages
from lcreg_jax.data import dataset as dataset_lib
from lcreg_jax.evaluate import predict as predict_lib
from tests import killing
from tests import tiny

pytestmark = pytest.mark.slow


def _config():
  cfg = tiny.tiny_config()
  cfg.data.val_per_class = 3
  cfg.stage2.enabled = False
  cfg.stage1.steps = 8
  cfg.eval.val_every = 2
  return cfg


def test_best_on_val_is_the_best_evaluated_step_and_resumes(tmp_path):
  captured = {}

  def capture(stage, step, state):
    if step % 2 == 0:
      captured[step] = jax.device_get(state)

  rows = stages.train_and_evaluate(_config(), str(tmp_path / 'a'),
                                   hooks=[capture])
  report = rows['stage1']
  best = report['best_on_val']

  # Independently: score every evaluated step's parameters on val and test.
  config = config_lib.resolve_and_validate(_config())
  data = dataset_lib.load(config.data)
  mesh = parallel.make_mesh(config.num_devices)

  def top1(state, split):
    state = parallel.replicate(state, mesh)
    pred = predict_lib.predict(state, data.eval_batches(
        split, global_batch_size=config.eval.batch_size,
        sharding=parallel.batch_sharding(mesh)), mesh=mesh)
    return float(np.mean(pred['logits'].argmax(-1) == pred['labels']))

  val = {s: top1(st, 'val') for s, st in sorted(captured.items())}
  assert sorted(val) == [2, 4, 6, 8]
  assert len(set(val.values())) > 1, val    # else any step would pass
  want = max(val, key=lambda s: (val[s], -s))   # first of the best
  assert best['step'] == want, val
  np.testing.assert_allclose(best['val_top1'], val[want], rtol=1e-6)
  np.testing.assert_allclose(report['top1_best_val'],
                             top1(captured[want], 'test'), rtol=1e-6)
  np.testing.assert_allclose(report['top1'], top1(captured[8], 'test'),
                             rtol=1e-6)
  summary = json.load(open(tmp_path / 'a' / 'summary.json'))
  assert summary['stage1']['top1_best_val'] == report['top1_best_val']
  # The inference API loads the same parameters (which='best_on_val').
  model = inference.load_workdir(tmp_path / 'a', 'stage1',
                                 which='best_on_val')
  images, labels = model.eval_split('test')
  assert model.step == want
  assert np.mean(model.predict(images)['probs'].argmax(1) == labels) == (
      pytest.approx(report['top1_best_val'], abs=1e-12))

  # Killed after step 7 (checkpoint at 6), resumed: the same choice.
  with pytest.raises(killing.Kill):
    stages.train_and_evaluate(_config(), str(tmp_path / 'b'),
                              hooks=[killing.kill_at(None, 7)])
  resumed = stages.train_and_evaluate(_config(), str(tmp_path / 'b'))
  assert resumed['stage1']['best_on_val'] == best
  assert resumed['stage1']['top1'] == report['top1']


def test_no_validation_split_no_best_column(tmp_path):
  cfg = _config()
  cfg.data.val_per_class = 0
  cfg.stage1.steps = 2
  rows = stages.train_and_evaluate(cfg, str(tmp_path))
  assert 'best_on_val' not in rows['stage1']
  assert not (tmp_path / 'stage1' / 'best_on_val').exists()
