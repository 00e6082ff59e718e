"""benchmarks/parity/: the parts that need no torch (the authors' code runs
only in the user's torch environment): the exports equal our data API's,
the parsers read the authors' log lines, the table's maths, and the edits
to the authors' code stop on a checkout they do not fit."""

import math
import os

import flax
import h5py
import jax
import numpy as np
import pytest

from benchmarks.parity import edits
from benchmarks.parity import export
from benchmarks.parity import results
from benchmarks.parity import run
from lcreg_jax import config as config_lib
from lcreg_jax import train_state
from lcreg_jax.config import baselines
from lcreg_jax.data import sources
from lcreg_jax.models import network
from tests import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Exports.


@pytest.mark.parametrize(
  'augment,pad,flip',
  [('crop', 1, False), ('crop_flip', 1, True), ('flip', 0, True)],
)
def test_exported_images_equal_the_data_api_and_carry_its_statistics(
  tmp_path, augment, pad, flip
):
  c = tiny.tiny_config()
  c.data.augment = augment
  c.data.val_per_class = 3
  data = export.load_arrays(c)
  path = export.write_npz(
    str(tmp_path / 'data.npz'), export.image_arrays(data, c.data)
  )
  got = np.load(path)
  want = sources.load_dataset(
    config_lib.resolve_and_validate(c, num_visible_devices=1).data
  )
  for split in ('train', 'val', 'test'):
    np.testing.assert_array_equal(
      got[f'{split}_images'], getattr(want, split).images
    )
    np.testing.assert_array_equal(
      got[f'{split}_labels'], getattr(want, split).labels
    )
  pixels = want.train.images.astype(np.float64).reshape(-1, 1) / 255
  np.testing.assert_allclose(got['mean'], pixels.mean(0), rtol=1e-6)
  np.testing.assert_allclose(got['std'], pixels.std(0), rtol=1e-5)
  assert int(got['pad']) == pad and bool(got['flip']) == flip


def test_dlsa_features_are_carved_and_standardised_as_our_stage(tmp_path):
  rng = np.random.default_rng(0)
  counts = [30, 12, 6]
  labels = np.repeat(np.arange(3), counts)
  rng.shuffle(labels)
  x = rng.normal(2.0, 3.0, (labels.size, 4)).astype(np.float32)
  x[:, 3] = 5.0  # a dead feature stays 0
  test = (rng.normal(size=(7, 4)).astype(np.float32), np.arange(7) % 3)
  splits = export.dlsa_splits({'train': (x, labels), 'test': test}, 3, 4)
  # By hand: the first min(4, n_c // 5) of each class, in order, go to val.
  val_rows = np.concatenate(
    [
      np.flatnonzero(labels == c)[: min(4, n // 5)]
      for c, n in enumerate(counts)
    ]
  )
  val_mask = np.zeros(labels.size, bool)
  val_mask[val_rows] = True
  mu = x[~val_mask].astype(np.float64).mean(0)
  sd = x[~val_mask].astype(np.float64).std(0)
  sd[3] = 1.0
  np.testing.assert_array_equal(splits['train'][1], labels[~val_mask])
  np.testing.assert_array_equal(splits['val'][1], labels[val_mask])
  np.testing.assert_allclose(
    splits['train'][0], (x[~val_mask] - mu) / sd, atol=1e-5
  )
  np.testing.assert_allclose(
    splits['val'][0], (x[val_mask] - mu) / sd, atol=1e-5
  )
  np.testing.assert_allclose(splits['test'][0], (test[0] - mu) / sd, atol=1e-5)
  n_val = export.write_dlsa_h5(str(tmp_path), splits)
  assert n_val == val_mask.sum()
  with h5py.File(tmp_path / 'feature_test.h5') as f:
    np.testing.assert_array_equal(
      f['labels'][...], np.concatenate([labels[val_mask], test[1]])
    )
    np.testing.assert_allclose(f['features'][n_val:], splits['test'][0])
  with h5py.File(tmp_path / 'feature_train.h5') as f:
    np.testing.assert_array_equal(f['labels'][...], labels[~val_mask])


def _resnet8_variables(latent: bool, rng):
  c = baselines.data_config(None)
  c.model.update(backbone='resnet8', classify_on='feature')
  c.model.latent.enabled = latent
  model = network.make_model(c.model, 10)
  variables = train_state.init_variables(model, jax.random.key(0), (8, 8, 1))
  # Every value random (variances positive), so no leaf can be misplaced
  # unnoticed behind an init value of 0 or 1.
  variables = jax.tree.map(
    lambda x: rng.uniform(0.5, 1.5, x.shape).astype(np.float32),
    flax.core.unfreeze(variables),
  )
  return model, variables


def _torch_layout_forward(sd, images):
  """MiSLAS's ResNet_fe (one basic block a stage, option-A shortcuts) and
  Classifier in eval mode, in NumPy/float64 on NCHW images, from the state
  dicts alone."""
  g = lambda name: sd[name].astype(np.float64)

  def conv(x, w, stride):  # 3x3, padding 1, no bias
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    h = (x.shape[2] - 3) // stride + 1
    return sum(
      np.einsum(
        'nchw,oc->nohw',
        x[:, :, i : i + stride * h : stride, j : j + stride * h : stride],
        w[:, :, i, j],
      )
      for i in range(3)
      for j in range(3)
    )

  def bn(x, name):
    mean, var = g(f'{name}.running_mean'), g(f'{name}.running_var')
    scale, bias = g(f'{name}.weight'), g(f'{name}.bias')
    r = lambda v: v[None, :, None, None]
    return (x - r(mean)) / np.sqrt(r(var) + 1e-5) * r(scale) + r(bias)

  relu = lambda x: np.maximum(x, 0)
  x = relu(bn(conv(images, g('model.conv1.weight'), 1), 'model.bn1'))
  for layer, stride in ((1, 1), (2, 2), (3, 2)):
    p = f'model.layer{layer}.0'
    planes = sd[f'{p}.conv1.weight'].shape[0]
    out = relu(bn(conv(x, g(f'{p}.conv1.weight'), stride), f'{p}.bn1'))
    out = bn(conv(out, g(f'{p}.conv2.weight'), 1), f'{p}.bn2')
    if stride != 1 or x.shape[1] != planes:
      x = np.pad(
        x[:, :, ::2, ::2],
        ((0, 0), (planes // 4, planes // 4), (0, 0), (0, 0)),
      )
    x = relu(out + x)
  feats = x.mean((2, 3))
  return feats @ g('classifier.fc.weight').T + g('classifier.fc.bias')


def test_our_model_as_mislas_state_dicts_computes_the_same_logits():
  rng = np.random.default_rng(0)
  model, variables = _resnet8_variables(latent=False, rng=rng)
  sd = export.torch_state_dicts(variables)
  want = {'model.conv1.weight', 'classifier.fc.weight', 'classifier.fc.bias'}
  for i in (1, 2, 3):
    for k in (1, 2):
      want.add(f'model.layer{i}.0.conv{k}.weight')
  for b in ['model.bn1'] + [
    f'model.layer{i}.0.bn{k}' for i in (1, 2, 3) for k in (1, 2)
  ]:
    want |= {f'{b}.{leaf}' for leaf in ('weight', 'bias')}
    want |= {f'{b}.running_{leaf}' for leaf in ('mean', 'var')}
  assert set(sd) == want  # MiSLAS's names, as load_state_dict(strict) wants
  images = rng.normal(size=(5, 8, 8, 1)).astype(np.float32)
  logits = model.apply(variables, images, train=False)['logits']
  np.testing.assert_allclose(
    _torch_layout_forward(sd, images.transpose(0, 3, 1, 2).astype(np.float64)),
    np.asarray(logits, np.float64),
    rtol=1e-4,
    atol=1e-4,
  )


def test_a_latent_module_has_no_mislas_counterpart():
  _, variables = _resnet8_variables(latent=True, rng=np.random.default_rng(0))
  with pytest.raises(ValueError, match='no counterpart for .*latent'):
    export.torch_state_dicts(variables)


# Parsers.

_MISLAS_LOG = '''\
2026-12-05 00:46:01,123 Epoch: [0][  0/117]\tTime  0.512 ( 0.512)\tLoss 2.301 (2.301)
2026-12-05 00:46:40,002 * Acc@1 52.310% Acc@5 95.020% HAcc 80.100% MAcc 40.000% TAcc 5.000%.
2026-12-05 00:46:40,010 * ECE   12.345%.
2026-12-05 00:46:40,011 Best Prec@1: 52.310% ECE: 12.345%
2026-12-05 00:47:20,002 * Acc@1 63.260% Acc@5 97.500% HAcc 85.000% MAcc 60.000% TAcc 20.000%.
2026-12-05 00:47:20,011 Best Prec@1: 63.260% ECE: 9.000%
2026-12-05 00:48:00,002 * Acc@1 61.810% Acc@5 97.000% HAcc 84.000% MAcc 58.000% TAcc 21.000%.
2026-12-05 00:48:00,011 Best Prec@1: 63.260% ECE: 9.000%
'''


def test_mislas_parser_reads_the_last_and_best_epoch():
  r = results.mislas_result(_MISLAS_LOG, epochs=3)
  assert r['top1'] == pytest.approx(0.6181)
  assert r['top1_best_test'] == pytest.approx(0.6326)
  assert r['top1_per_epoch'] == pytest.approx([0.5231, 0.6326, 0.6181])
  with pytest.raises(ValueError, match='2 test evaluations'):
    results.mislas_result(_MISLAS_LOG.split('00:48')[0], epochs=3)


def test_dlsa_parsers():
  text = (
    '[cacls] Best epoch: 45, Test [45] 71.230 / 1, 2, 3\n'
    '[2026-12-05 00:50:00] [cacls] Best epoch: 45, Test [45] 71.230 / '
    '1, 2, 3\n[regcls] Best epoch: 150, Test [150] 70.000 / 1, 2, 3\n'
    '[2026-12-05 00:51:00] [regcls] Best epoch: 150, Test '
    '[150] 70.000 / 1, 2, 3\n'
  )
  assert results.dlsa_chosen_epochs(text) == {'cacls': [45], 'regcls': [150]}
  # Rows: 2 validation, then 3 test.
  r = results.dlsa_result([1, 0, 2, 2, 0], [1, 1], [2, 0, 0])
  assert r == {'top1': pytest.approx(2 / 3), 'val_top1': 0.5}
  with pytest.raises(ValueError):
    results.dlsa_result([1, 0, 2], [1, 1], [2, 0, 0])


def test_ours_result_reads_summary_and_control(tmp_path):
  (tmp_path / 'dlsa_depth0').mkdir()
  (tmp_path / 'summary.json').write_text(
    '{"stage1": {"top1": 0.6}, "stage2": {"top1": 0.7}, "dlsa": {"top1": 0.65}}'
  )
  (tmp_path / 'dlsa_depth0' / 'report.json').write_text('{"top1": 0.69}')
  assert results.ours_result(str(tmp_path)) == {
    'stage1': 0.6,
    'stage2': 0.7,
    'dlsa': 0.65,
    'dlsa_depth0': 0.69,
  }


# The table.


def test_compare_against_numpy():
  rng = np.random.default_rng(1)
  ours, theirs = rng.normal(0.78, 0.01, 6), rng.normal(0.77, 0.02, 5)
  c = results.compare(list(ours), list(theirs))
  se = np.sqrt(np.var(ours, ddof=1) / 6 + np.var(theirs, ddof=1) / 5)
  assert c['ours'] == pytest.approx((ours.mean(), ours.std(ddof=1), 6))
  assert c['theirs'] == pytest.approx((theirs.mean(), theirs.std(ddof=1), 5))
  assert c['diff'] == pytest.approx(ours.mean() - theirs.mean())
  assert c['se'] == pytest.approx(se)
  assert c['z'] == pytest.approx((ours.mean() - theirs.mean()) / se)
  # Missing seeds (None) are left out; one value has no spread.
  assert results.mean_std([0.5, None])[1:] == (
    pytest.approx(math.nan, nan_ok=True),
    1,
  )
  assert results.deltas([0.7, None], [0.6, 0.5]) == [pytest.approx(0.1), None]


def test_paired_against_numpy():
  ours = [0.786, 0.7621, None, 0.7733]
  theirs = [0.7847, 0.7636, 0.7486, 0.7757]
  got = results.paired(ours, theirs)
  d = np.array([0.786 - 0.7847, 0.7621 - 0.7636, 0.7733 - 0.7757])
  assert got['diff'] == pytest.approx(d.mean())
  assert got['se'] == pytest.approx(d.std(ddof=1) / np.sqrt(3))
  # The sides' means are over the seeds both have.
  assert got['ours'][0] == pytest.approx(np.mean([0.786, 0.7621, 0.7733]))
  assert got['theirs'][2] == 3


def test_markdown_table_says_whether_within_two_standard_errors():
  near = results.compare([0.7804, 0.79, 0.77], [0.7801, 0.775, 0.785])
  far = results.compare([0.60, 0.61, 0.62], [0.70, 0.71, 0.72])
  lines = results.markdown_table([('near', near), ('far', far)]).splitlines()
  assert lines[2].startswith('| near | 78.01 ± 1.00 | 78.00 ± 0.50 | 3 / 3 |')
  assert lines[2].endswith('| yes |') and lines[3].endswith('| no |')


def test_summarize_pairs_dlsa_with_its_control_per_seed():
  per_seed = {
    s: {
      'ours': {'top1_dlsa': d, 'top1_dlsa_depth0': c},
      'dlsa_val_dlsa': {'top1': td},
      'dlsa_val_control': {'top1': tc},
    }
    for s, (d, c, td, tc) in enumerate(
      [
        (0.60, 0.64, 0.61, 0.63),
        (0.62, 0.65, 0.60, 0.64),
        (0.59, 0.64, 0.62, 0.65),
      ]
    )
  }
  _, summary = run.summarize(per_seed, ['val'])
  row = summary['rows']['DLSA − control (theirs: on val)']
  ours = np.array([-0.04, -0.03, -0.05])
  theirs = np.array([-0.02, -0.04, -0.03])
  assert row['diff'] == pytest.approx(ours.mean() - theirs.mean())
  assert row['se'] == pytest.approx(
    np.sqrt(ours.var(ddof=1) / 3 + theirs.var(ddof=1) / 3)
  )
  # On the same features, seed by seed.
  row = summary['rows']['DLSA, paired by seed (theirs: on val)']
  d = np.array([0.60 - 0.61, 0.62 - 0.60, 0.59 - 0.62])
  assert row['diff'] == pytest.approx(d.mean())
  assert row['se'] == pytest.approx(d.std(ddof=1) / np.sqrt(3))


# The authors' settings from ours.


def _resolved(**overrides):
  c = baselines.data_config('fashion_mnist_lt')
  c.model.latent.enabled = False
  c.model.classify_on = 'feature'
  for k, v in overrides.items():
    c[k.split('.')[0]][k.split('.')[1]] = v
  return config_lib.resolve_and_validate(c, num_visible_devices=1).to_dict()


def test_mislas_yaml_takes_our_schedule():
  config = _resolved(**{'stage1.epochs': 5.0, 'stage2.epochs': 2.0})
  s1 = run.mislas_yaml(config, 'stage1', 3, '/d.npz', 0)
  s2 = run.mislas_yaml(config, 'stage2', 3, '/d.npz', 0, resume='/c')
  assert (
    s1['lr'],
    s1['batch_size'],
    s1['weight_decay'],
    s1['num_epochs'],
    s1['momentum'],
    s1['mixup'],
    s1['alpha'],
    s1['seed'],
  ) == (0.1, 128, 2e-4, 5, 0.9, True, 1.0, 3)
  st2 = config['stage2']
  assert (
    s2['smooth_head'],
    s2['smooth_tail'],
    s2['lr_factor'],
    s2['num_epochs'],
    s2['resume'],
    s2['mixup'],
    s2['shift_bn'],
  ) == (
    st2['las_head'],
    st2['las_tail'],
    st2['lr_factor'],
    2,
    '/c',
    False,
    st2['shift_bn'],
  )
  assert s2['weight_decay'] == st2['weight_decay'] is not None
  assert run.schedule_problems(config) == []
  assert run.schedule_problems(_resolved(**{'stage1.decay_epochs': (3.0,)}))
  assert run.schedule_problems(_resolved(**{'stage2.samples_per_class': 8}))


def test_dlsa_yaml_flow_epochs_match_our_flow_steps():
  config = _resolved()
  d = config['dlsa']
  args = run.parse_args([])
  cfg = run.dlsa_yaml(config, args, '/f', '/r', n_train=14694)
  assert cfg['gmflow']['optim']['epoch'] == round(
    d['flow_steps'] * d['flow_batch_size'] / 14694
  )
  assert cfg['filter']['llh_proportion'] == d['top_fraction']
  assert cfg['max_depth'] == d['depth']
  assert cfg['gmflow']['loss']['lambda_purity'] == d['purity_weight']


# The edits.


def _fake_checkout(root):
  files = {'a.py': 'x = 1\nseed = 0\n', 'b.py': 'y = 2\n'}
  for name, text in files.items():
    (root / name).write_text(text)
  return files


def test_edits_apply_to_a_copy_and_stop_on_a_missing_anchor(tmp_path):
  src = tmp_path / 'src'
  src.mkdir()
  files = _fake_checkout(src)
  good = [
    edits.Edit('a.py', 'w', 'seed = 0\n', 'seed = s\n'),
    edits.Edit('b.py', 'w', new='z = 3\n', kind='append'),
    edits.Edit('c/new.py', 'w', new='new\n', kind='create'),
  ]
  dst = edits.prepare(str(src), str(tmp_path / 'dst'), good, ('a.py',))
  assert (tmp_path / 'dst' / 'a.py').read_text() == 'x = 1\nseed = s\n'
  assert (tmp_path / 'dst' / 'b.py').read_text() == 'y = 2\nz = 3\n'
  assert (tmp_path / 'dst' / 'c' / 'new.py').read_text() == 'new\n'
  for name, text in files.items():  # the user's checkout is untouched
    assert (src / name).read_text() == text
  with pytest.raises(
    edits.EditError,
    match=r"a.py: the anchor 'seed = 1\\n'"
    ' occurs 0 times',
  ):
    edits.apply_edits(dst, [edits.Edit('a.py', 'w', 'seed = 1\n', 'q\n')])
  with pytest.raises(edits.EditError, match='occurs 2 times'):
    edits.apply_edits(dst, [edits.Edit('a.py', 'w', 's', 'q')])
  with pytest.raises(edits.EditError, match='exists already'):
    edits.apply_edits(dst, [edits.Edit('b.py', 'w', new='', kind='create')])
  with pytest.raises(edits.EditError, match='lacks nothere.py'):
    edits.prepare(str(src), str(tmp_path / 'd2'), good, ('nothere.py',))


def test_the_score_edited_into_dlsa_is_the_class_mean_when_asked(
  monkeypatch,
):
  namespace = {'np': np}
  exec(edits._PARITY_SCORE, namespace)  # pylint: disable=exec-used
  score = namespace['_parity_score']
  gt = np.array([0] * 8 + [1] * 2)  # unbalanced, as our validation rows
  pred = np.array([0] * 8 + [0, 1])
  monkeypatch.delenv('PARITY_METRIC', raising=False)
  assert score(pred, gt) == pytest.approx(0.9)  # the authors': over rows
  monkeypatch.setenv('PARITY_METRIC', 'class_mean')
  assert score(pred, gt) == pytest.approx((1.0 + 0.5) / 2)


def test_every_edit_has_a_reason_and_edits_md_is_generated():
  for e in edits.mislas_edits(1, 1) + edits.dlsa_edits():
    assert len(e.why) > 20 and (e.anchor or e.kind != 'replace')
  with open(os.path.join(ROOT, 'benchmarks', 'parity', 'EDITS.md')) as f:
    assert f.read() == edits.markdown()


def test_collect_reads_every_finished_part_of_every_seed(tmp_path):
  for seed, name, top1 in (
    (0, 'ours', 0.6),
    (0, 'mislas_stage1', 0.5),
    (3, 'dlsa_val_dlsa', 0.7),
  ):
    (tmp_path / f'seed_{seed}' / name).mkdir(parents=True)
    (tmp_path / f'seed_{seed}' / name / 'result.json').write_text(
      f'{{"top1": {top1}}}'
    )
  (tmp_path / 'seed_3' / 'mislas_stage2').mkdir()  # unfinished: no result
  assert run.collect(str(tmp_path)) == {
    0: {'ours': {'top1': 0.6}, 'mislas_stage1': {'top1': 0.5}},
    3: {'dlsa_val_dlsa': {'top1': 0.7}},
  }
