"""Best-on-validation selection: the step chosen is the first one with the
highest validation score by eval.select_metric among the evaluated steps,
its test metrics are those of that step's parameters, and a killed run
resumes to the same choice."""

import json
import types

import flax
import jax
import numpy as np
import pytest

from lcreg_jax import config as config_lib
from lcreg_jax import errors
from lcreg_jax import inference
from lcreg_jax import parallel
from lcreg_jax import stages
from lcreg_jax.data import dataset as dataset_lib
from lcreg_jax.evaluate import predict as predict_lib
from lcreg_jax.stages import best_on_val
from tests import killing
from tests import tiny


@flax.struct.dataclass
class _State:
  params: dict
  batch_stats: dict


# Validation predictions at the evaluated steps, on an unbalanced split of
# 8 images of class 0 and 2 of class 1. Step 4 and step 8 predict alike.
_UNBALANCED = np.array([0] * 8 + [1] * 2)
_PREDICTED = {
  2: [0] * 8 + [0, 0],  # all class 0
  4: [0] * 6 + [1, 1] + [1, 1],  # class 0 6/8, class 1 2/2
  6: [0] * 8 + [1, 0],  # class 0 8/8, class 1 1/2
  8: [0] * 6 + [1, 1] + [1, 1],
}


def _numpy_best(labels, predicted, metric):
  """The first evaluated step with the highest score, in float64."""

  def score(pred):
    hit = np.asarray(pred) == labels
    if metric == 'image_mean':
      return hit.mean()
    return np.mean([hit[labels == c].mean() for c in np.unique(labels)])

  scores = {s: score(p) for s, p in sorted(predicted.items())}
  return max(scores, key=lambda s: (scores[s], -s)), scores


def _offer_steps(
  tmp_path, metric, labels, predicted, steps, stage='s', num_classes=2
):
  """Offers `steps` to a BestOnVal as the loop would; its selection after."""
  cfg = tiny.tiny_config()
  cfg.eval.select_metric = metric
  ctx = types.SimpleNamespace(
    config=cfg,
    info=types.SimpleNamespace(num_classes=num_classes),
    stage_dir=lambda s: tmp_path / s,
  )
  current = {}

  def predict(ctx, state, split):
    assert split == 'val'
    return dict(
      logits=np.eye(num_classes)[predicted[current['step']]], labels=labels
    )

  select = best_on_val.BestOnVal(
    ctx, stage, _state(0), {'model': 'toy'}, predict
  )
  try:
    for step in steps:
      current['step'] = step
      state, scores = select(step, _state(step))
      assert int(state.params['w'][0]) == step  # returned unchanged
      assert set(scores) == {'val_top1', 'val_class_mean_top1'}
  finally:
    select.close()
  return ctx, select.selection


def _state(step):
  return _State(
    params={'w': np.full(3, step, np.float32)},
    batch_stats={'m': np.full(2, -step, np.float32)},
  )


@pytest.mark.parametrize('metric', ['class_mean', 'image_mean'])
def test_best_on_val_step_by_select_metric_and_resume(metric, tmp_path):
  want, scores = _numpy_best(_UNBALANCED, _PREDICTED, metric)
  other, _ = _numpy_best(
    _UNBALANCED,
    _PREDICTED,
    {'class_mean': 'image_mean', 'image_mean': 'class_mean'}[metric],
  )
  assert want != other  # the case is what it says
  ctx, chosen = _offer_steps(
    tmp_path / 'a', metric, _UNBALANCED, _PREDICTED, [2, 4, 6, 8]
  )
  assert int(chosen.best_step) == want
  assert float(chosen.best_score) == np.float32(scores[want])
  # Killed after step 4, resumed by a new BestOnVal: the same choice.
  _offer_steps(tmp_path / 'b', metric, _UNBALANCED, _PREDICTED, [2, 4])
  ctx, resumed = _offer_steps(
    tmp_path / 'b', metric, _UNBALANCED, _PREDICTED, [6, 8]
  )
  assert int(resumed.best_step) == want
  state, step, score = best_on_val.load(ctx, 's', _state(0), {'model': 'toy'})
  assert step == want and score == np.float32(scores[want])
  np.testing.assert_array_equal(state.params['w'], np.full(3, want))
  np.testing.assert_array_equal(state.batch_stats['m'], np.full(2, -want))


def test_best_on_val_is_the_same_step_by_either_metric_when_balanced(tmp_path):
  labels = np.array([0, 0, 1, 1, 2, 2])
  predicted = {
    2: [0, 0, 1, 1, 0, 0],  # per class 1, 1, 0
    4: [0, 1, 1, 1, 2, 2],  # 1/2, 1, 1: the first best
    6: [0, 1, 1, 0, 2, 0],  # 1/2, 1/2, 1/2
    8: [0, 0, 1, 1, 2, 0],
  }  # 1, 1, 1/2: as good as step 4
  steps = {
    m: int(
      _offer_steps(
        tmp_path / m, m, labels, predicted, [2, 4, 6, 8], num_classes=3
      )[1].best_step
    )
    for m in ('class_mean', 'image_mean')
  }
  assert steps == {'class_mean': 4, 'image_mean': 4}


def test_best_on_val_folder_belongs_to_its_select_metric(tmp_path):
  _offer_steps(tmp_path, 'class_mean', _UNBALANCED, _PREDICTED, [2])
  with pytest.raises(errors.CheckpointError, match='select_metric'):
    _offer_steps(tmp_path, 'image_mean', _UNBALANCED, _PREDICTED, [4])


def _config():
  cfg = tiny.tiny_config()
  cfg.data.val_per_class = 3
  cfg.stage2.enabled = False
  cfg.stage1.steps = 8
  cfg.eval.val_every = 2
  return cfg


@pytest.mark.slow
def test_best_on_val_is_the_best_evaluated_step_and_resumes(tmp_path):
  captured = {}

  def capture(stage, step, state):
    if step % 2 == 0:
      captured[step] = jax.device_get(state)

  rows = stages.train_and_evaluate(
    _config(), str(tmp_path / 'a'), hooks=[capture]
  )
  report = rows['stage1']
  best = report['best_on_val']

  # Independently: score every evaluated step's parameters on val and test.
  config = config_lib.resolve_and_validate(_config())
  data = dataset_lib.load(config.data)
  mesh = parallel.make_mesh(config.num_devices)

  def hits(state, split):
    state = parallel.replicate(state, mesh)
    pred = predict_lib.predict(
      state,
      data.eval_batches(
        split,
        global_batch_size=config.eval.batch_size,
        sharding=parallel.batch_sharding(mesh),
      ),
      mesh=mesh,
    )
    return pred['logits'].argmax(-1) == pred['labels'], pred['labels']

  def top1(state, split):
    return float(np.mean(hits(state, split)[0]))

  def class_mean(state, split):  # eval.select_metric's default
    hit, labels = hits(state, split)
    return np.mean([hit[labels == c].mean() for c in np.unique(labels)])

  val = {s: class_mean(st, 'val') for s, st in sorted(captured.items())}
  assert sorted(val) == [2, 4, 6, 8]
  assert len(set(val.values())) > 1, val  # else any step would pass
  want = max(val, key=lambda s: (val[s], -s))  # first of the best
  assert best['step'] == want, val
  np.testing.assert_allclose(best['val_class_mean_top1'], val[want], rtol=1e-6)
  assert best['select_metric'] == report['select_metric'] == 'class_mean'
  np.testing.assert_allclose(
    report['top1_best_val'], top1(captured[want], 'test'), rtol=1e-6
  )
  np.testing.assert_allclose(
    report['top1'], top1(captured[8], 'test'), rtol=1e-6
  )
  summary = json.load(open(tmp_path / 'a' / 'summary.json'))
  assert summary['stage1']['top1_best_val'] == report['top1_best_val']
  assert summary['stage1']['select_metric'] == 'class_mean'
  # The inference API loads the same parameters (which='best_on_val').
  model = inference.load_workdir(tmp_path / 'a', 'stage1', which='best_on_val')
  images, labels = model.eval_split('test')
  assert model.step == want
  assert np.mean(model.predict(images)['probs'].argmax(1) == labels) == (
    pytest.approx(report['top1_best_val'], abs=1e-12)
  )

  # Killed after step 7 (checkpoint at 6), resumed: the same choice.
  with pytest.raises(killing.Kill):
    stages.train_and_evaluate(
      _config(), str(tmp_path / 'b'), hooks=[killing.kill_at(None, 7)]
    )
  resumed = stages.train_and_evaluate(_config(), str(tmp_path / 'b'))
  assert resumed['stage1']['best_on_val'] == best
  assert resumed['stage1']['top1'] == report['top1']


@pytest.mark.slow
def test_no_validation_split_no_best_column(tmp_path):
  cfg = _config()
  cfg.data.val_per_class = 0
  cfg.stage1.steps = 2
  rows = stages.train_and_evaluate(cfg, str(tmp_path))
  assert 'best_on_val' not in rows['stage1']
  assert not (tmp_path / 'stage1' / 'best_on_val').exists()
