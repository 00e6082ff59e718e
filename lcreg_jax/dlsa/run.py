"""DLSA end to end on frozen features: flow training, likelihood routing and
the staged classifiers (docs/method.md §6).

Every flow and classifier trains through the shared loop with its own
checkpoints under `workdir/<component>/`, so a killed DLSA run resumes where
it stopped; every choice is made on validation, test labels are never read.
"""

import dataclasses
import hashlib
import time
from typing import Any, Callable

from absl import logging
import numpy as np

from lcreg_jax import files
from lcreg_jax import losses
from lcreg_jax.config import dlsa as dlsa_config
from lcreg_jax.dlsa import classifiers
from lcreg_jax.dlsa import flow_training
from lcreg_jax.dlsa import routing

_SPLITS = ('train', 'val', 'test')


@dataclasses.dataclass
class DLSAResult:
  test_probs: np.ndarray  # (N_test, C) float32.
  test_stage: np.ndarray  # (N_test,) 0..depth-1 cluster-aided, depth final.
  val_accuracy: float
  stage_report: dict  # stage -> {'share', 'accuracy', 'train_routed', ...}.
  # The depth-0 control (the final classifier alone on all training
  # samples, no routing); None when `depth0_control` is off.
  # (N_train,) the stage that took each training sample (as test_stage).
  train_stage: np.ndarray | None = None
  control_test_probs: np.ndarray | None = None
  control_val_accuracy: float | None = None


def digest(*arrays) -> str:
  """SHA-256 of arrays' bytes: identifies a component's training inputs, so
  checkpoints trained on other features are never resumed."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(str((a.shape, a.dtype.str)).encode())
    h.update(a.tobytes())
  return h.hexdigest()


def _check_features(data: dict, num_classes: int):
  for s, (x, y) in data.items():
    if x.ndim != 2 or y.shape != (x.shape[0],):
      raise ValueError(
        f'{s}: need (N, D) features and (N,) labels, got '
        f'{x.shape} and {y.shape}'
      )
    if y.size and (y.min() < 0 or y.max() >= num_classes):
      raise ValueError(f'{s}: labels outside [0, {num_classes})')


def _with_preset(config):
  """config, or for a bare `dlsa_config()` (direct callers) a copy with the
  generic authors' values; full configs get the data set's row in
  config/resolve.py."""
  if all(config[f] is not None for f in dlsa_config.PRESET_FIELDS):
    return config
  cfg = config.copy_and_resolve_references()
  cfg.unlock()
  return dlsa_config.with_preset(cfg)


def _standardized(data: dict, cfg) -> dict:
  """Features standardised with the training mean/std (cfg.standardize):
  stage-1 features are post-ReLU with arbitrary scale; a constant affine
  map only shifts log p, so routing is unaffected."""
  if not cfg.standardize:
    return data
  mu = data['train'][0].mean(0)
  sd = data['train'][0].std(0)
  sd = np.where(sd > 1e-6, sd, 1.0)  # Dead (constant) features stay 0.
  return {s: ((x - mu) / sd, y) for s, (x, y) in data.items()}


@dataclasses.dataclass
class _Run:
  """One DLSA run's inputs and what its steps fill in: which samples each
  stage took, their probabilities and each stage's information."""

  cfg: Any
  c: int
  x: dict  # split -> (N, D) features
  y: dict  # split -> (N,) labels
  workdir: str
  common: dict  # the keyword arguments every component shares
  select_metric: str  # eval.select_metric: the score of every val choice
  remaining: dict = dataclasses.field(default_factory=dict)
  stage_of: dict = dataclasses.field(default_factory=dict)
  probs: dict = dataclasses.field(default_factory=dict)
  info: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self.n = {s: y.size for s, y in self.y.items()}
    self.full_counts = np.bincount(self.y['train'], minlength=self.c)
    self.fingerprint = {'dlsa': self.cfg.to_dict(), 'num_classes': self.c}
    self.remaining = {s: np.ones(self.n[s], bool) for s in _SPLITS}
    self.stage_of = {
      s: np.full(self.n[s], self.cfg.depth, np.int32) for s in _SPLITS
    }
    self.probs = {s: np.zeros((self.n[s], self.c), np.float32) for s in _SPLITS}
    self.final_model = classifiers.final_model(self.cfg, self.c)

  def component(self, name: str, index: int, *arrays) -> dict:
    # Flows and classifiers each use seeds s and s + 1 (init, steps).
    return dict(
      self.common,
      name=name,
      workdir=files.as_path(self.workdir) / name,
      seed=self.cfg.seed * 1000 + 2 * index,
      fingerprint=dict(self.fingerprint, inputs=digest(*arrays)),
    )

  def accuracy(self, s, mask) -> float:
    if not mask.any():
      return float('nan')
    return float(losses.top1(self.probs[s][mask], self.y[s][mask]))


def _train_flow(run: _Run, st: int):
  """The stage's flow on the samples no earlier stage took: its outputs
  (logp, cluster, z) on every split and its information."""
  x, y, cfg = run.x, run.y, run.cfg
  tr, va = run.remaining['train'], run.remaining['val']
  flow_inputs = (x['train'][tr], y['train'][tr], x['val'][va], y['val'][va])
  model, variables, centers, finfo = flow_training.train_flow(
    *flow_inputs,
    pad_to=run.n['train'],
    **run.component(f'flow_{st}', st, *flow_inputs),
  )
  flow_info = {
    'flow_n_train': int(tr.sum()),
    'flow_select_score': finfo['val_score'],
    'flow_over_cap': finfo['over_cap'],
    'flow_step': int(finfo['step']),
  }
  outs = {
    s: flow_training.flow_evaluate(
      model, variables, centers, x[s], cfg.eval_chunk
    )
    for s in _SPLITS
  }
  return outs, flow_info


def _route_stage(run: _Run, st: int, outs: dict, flow_info: dict):
  """Routing stage st: the top of the remaining samples by log p go to a
  cluster-aided classifier; their probabilities are filled in."""
  x, y, n, c, cfg = run.x, run.y, run.n, run.c, run.cfg
  logp = {s: outs[s][0] for s in _SPLITS}
  cluster = {s: outs[s][1] for s in _SPLITS}
  routed_tr, thr = routing.route_stage(
    logp['train'], run.remaining['train'], cfg.top_fraction
  )
  routed = {'train': routed_tr}
  for s in ('val', 'test'):
    routed[s] = routing.route_by_threshold(logp[s], run.remaining[s], thr)
  run.info[st] = dict(
    flow_info, threshold=thr, train_routed=int(routed_tr.sum())
  )
  if not routed_tr.any():
    run.common['log'](f'stage {st}: no training samples left to route; skipped')
    return
  # The authors build the prior from every training sample under this
  # stage's flow, not only from the ones the stage takes.
  on_prior = (
    np.ones(n['train'], bool) if cfg.cluster_prior_from == 'all' else routed_tr
  )
  prior = routing.cluster_prior_matrix(
    cluster['train'][on_prior], y['train'][on_prior], cfg.num_clusters, c
  )

  def inputs(s, mask):
    z = outs[s][2][mask] if cfg.use_flow_latent else x[s][mask]
    return x[s][mask], np.concatenate([z, prior[cluster[s][mask]]], 1)

  model_c = classifiers.ClusterAidedClassifier(c, cfg.classifier_init)
  args = (
    inputs('train', routed_tr),
    y['train'][routed_tr],
    inputs('val', routed['val']),
    y['val'][routed['val']],
  )
  params, offset, cinfo = classifiers.train_classifier(
    model_c,
    *args,
    pad_to=(n['train'], n['val']),
    select_metric=run.select_metric,
    **run.component(
      f'classifier_{st}', cfg.depth + st, *args[0], args[1], *args[2], args[3]
    ),
  )
  run.info[st]['val_selection_score'] = cinfo['val_score']
  correction = classifiers.prior_correction(
    np.bincount(args[1], minlength=c),
    run.full_counts,
    cfg.balanced_softmax_tiny,
  )
  use = choose_prior_correction(
    cfg.stage_prior_correction,
    lambda off: classifiers.predict_probs(
      model_c, params, off, inputs('val', routed['val']), cfg.eval_chunk
    ),
    offset,
    correction,
    y['val'][routed['val']],
    c,
    run.select_metric,
  )
  run.info[st]['prior_correction'] = use
  if use:
    offset = offset + correction
  for s in ('val', 'test'):
    run.probs[s][routed[s]] = classifiers.predict_probs(
      model_c, params, offset, inputs(s, routed[s]), cfg.eval_chunk
    )
  for s in _SPLITS:
    run.stage_of[s][routed[s]] = st
    run.remaining[s] &= ~routed[s]


def _final_classifier(
  run: _Run, name: str, index: int, rem: dict, train_rows=None
):
  """The ordinary classifier for the samples `rem` marks, trained on the
  training rows `train_rows` marks (default: rem's); its balanced softmax
  uses the full training counts (authors) or the remaining ones. Returns
  its information and its val and test probabilities."""
  x, y, cfg = run.x, run.y, run.cfg
  model_f = run.final_model
  final_counts = run.full_counts if cfg.final_counts == 'full' else None
  rows = rem['train'] if train_rows is None else train_rows
  args = (
    (x['train'][rows],),
    y['train'][rows],
    (x['val'][rem['val']],),
    y['val'][rem['val']],
  )
  params, offset, cinfo = classifiers.train_classifier(
    model_f,
    *args,
    balanced=cfg.final_balanced_softmax,
    prior_counts=final_counts,
    pad_to=(run.n['train'], run.n['val']),
    select_metric=run.select_metric,
    **run.component(name, index, args[0][0], args[1], args[2][0], args[3]),
  )
  return cinfo, {
    s: classifiers.predict_probs(
      model_f, params, offset, (x[s][rem[s]],), cfg.eval_chunk
    )
    for s in ('val', 'test')
  }


def _share_by_class(y, on, c: int) -> list:
  """Per class, the share of its samples that `on` selects (None: none)."""
  total, here = np.bincount(y, minlength=c), np.bincount(y[on], minlength=c)
  return [float(h / t) if t else None for h, t in zip(here, total)]


def _accuracy_by_class(probs, y, on, c: int) -> list:
  """Per class, top-1 over its samples that `on` selects (None: none)."""
  hit = (probs[on].argmax(-1) == y[on]).astype(np.float64)
  correct = np.bincount(y[on], weights=hit, minlength=c)
  here = np.bincount(y[on], minlength=c)
  return [float(k / h) if h else None for k, h in zip(correct, here)]


def _stage_report(run: _Run) -> dict:
  """stage -> its share and accuracy on val and test, routed training
  samples, threshold and (routing stages) its flow's information; per
  class, the shares of training and test samples it takes and its test
  top-1 on them (docs/dlsa.md: what routing does to rare classes)."""
  n, depth = run.n, run.cfg.depth
  report = {}
  for st in range(depth + 1):
    on = {s: run.stage_of[s] == st for s in ('train', 'val', 'test')}
    report[st] = {
      'train_share_by_class': _share_by_class(
        run.y['train'], on['train'], run.c
      ),
      'test_share_by_class': _share_by_class(run.y['test'], on['test'], run.c),
      'test_accuracy_by_class': _accuracy_by_class(
        run.probs['test'], run.y['test'], on['test'], run.c
      ),
      'share': float(on['test'].mean()) if n['test'] else float('nan'),
      'accuracy': run.accuracy('test', on['test']),
      'train_routed': int((run.stage_of['train'] == st).sum()),
      'val_share': float(on['val'].mean()) if n['val'] else float('nan'),
      'val_accuracy': run.accuracy('val', on['val']),
      'threshold': float(run.info.get(st, {}).get('threshold', np.inf)),
    }
  for st in range(depth):
    for key in (
      'flow_n_train',
      'flow_select_score',
      'flow_over_cap',
      'flow_step',
      'prior_correction',
    ):
      if key in run.info.get(st, {}):
        report[st][key] = run.info[st][key]
  return report


def _depth0_control(run: _Run, val_acc: float):
  """The same final classifier (seed index 0, as in a depth-0 run) on all
  training samples: what routing adds is DLSA minus this row. Its test
  probabilities and val accuracy."""
  if run.cfg.depth == 0:  # DLSA itself is the control.
    return run.probs['test'], val_acc
  everything = {s: np.ones(run.n[s], bool) for s in _SPLITS}
  _, cprobs = _final_classifier(run, 'classifier_depth0', 0, everything)
  control_val = float('nan')
  if run.n['val']:
    control_val = float(losses.top1(np.asarray(cprobs['val']), run.y['val']))
  return cprobs['test'], control_val


def run_dlsa(
  config,
  *,
  train,
  val,
  test,
  num_classes: int,
  workdir: str,
  select_metric: str = 'class_mean',
  checkpoint_every: int = 500,
  hooks=(),
  log: Callable[[str], None] = logging.info,
) -> DLSAResult:
  """Runs DLSA on frozen features.

  Args:
    config: the validated `config.dlsa` section (`dlsa_config()` with any
      changes). `enabled` is for the caller; run_dlsa runs regardless.
    train, val, test: (features (N, D) float32, labels (N,) int).
    num_classes: C.
    workdir: one folder per component (`flow_<s>`, `classifier_<s>`,
      `classifier_final`) with its checkpoints and TensorBoard events.
    select_metric: `eval.select_metric`, the validation score of the
      classifiers' checkpoints and of `stage_prior_correction='val'`
      ('class_mean' or 'image_mean').
    checkpoint_every: steps between checkpoints of each component.
    hooks: the loop's hooks, called as hook(name, step, state).
    log: progress sink.
  Returns:
    DLSAResult; stage s < depth is the s-th cluster-aided classifier,
    stage depth the final ordinary one. Every choice is made on val only.
  """
  t0 = time.time()
  run = _start(
    _with_preset(config),
    num_classes,
    (train, val, test),
    workdir,
    select_metric,
    common=dict(checkpoint_every=checkpoint_every, hooks=hooks, log=log),
  )
  outs = flow_info = None
  for st in range(run.cfg.depth):
    if outs is None or run.cfg.flow_per_stage:
      outs, flow_info = _train_flow(run, st)
    _route_stage(run, st, outs, flow_info)
  _classify_remaining(run)
  report = _stage_report(run)
  val_acc = run.accuracy('val', np.ones(run.n['val'], bool))
  log(
    f'DLSA: val_acc={val_acc:.4f} in {time.time() - t0:.1f}s; stages: '
    + ', '.join(
      f'{st}: share={r["share"]:.3f} acc={r["accuracy"]:.4f}'
      for st, r in report.items()
    )
  )
  control_probs = control_val = None
  if run.cfg.depth0_control:
    control_probs, control_val = _depth0_control(run, val_acc)
    log(f'DLSA depth-0 control: val_acc={control_val:.4f}')
  return DLSAResult(
    test_probs=run.probs['test'],
    test_stage=run.stage_of['test'],
    val_accuracy=val_acc,
    stage_report=report,
    train_stage=run.stage_of['train'],
    control_test_probs=control_probs,
    control_val_accuracy=control_val,
  )


def _start(cfg, num_classes, splits, workdir, select_metric, common) -> _Run:
  """The run's state: checked, standardised float32 features per split."""
  c = int(num_classes)
  data = {
    s: (np.asarray(d[0], np.float32), np.asarray(d[1]).astype(np.int32))
    for s, d in zip(_SPLITS, splits)
  }
  _check_features(data, c)
  data = _standardized(data, cfg)
  return _Run(
    cfg=cfg,
    c=c,
    x={s: d[0] for s, d in data.items()},
    y={s: d[1] for s, d in data.items()},
    workdir=workdir,
    select_metric=select_metric,
    common=dict(common, num_classes=c, config=cfg),
  )


def _classify_remaining(run: _Run):
  """The final ordinary classifier on whatever no stage took."""
  cfg, rem = run.cfg, run.remaining
  # 'all' (this project's): classes a stage took whole stay known to it.
  everything = np.ones(run.n['train'], bool)
  cinfo, final_probs = _final_classifier(
    run,
    'classifier_final',
    2 * cfg.depth,
    rem,
    everything if cfg.final_trained_on == 'all' else None,
  )
  for s in ('val', 'test'):
    run.probs[s][rem[s]] = final_probs[s]
  run.info[cfg.depth] = {
    'threshold': -np.inf,
    'train_routed': int(rem['train'].sum()),
    'val_selection_score': cinfo['val_score'],
  }


def choose_prior_correction(
  mode: str,
  predict,
  offset,
  correction,
  val_labels,
  num_classes: int,
  select_metric: str = 'class_mean',
) -> bool:
  """Whether a stage adds log(n_c,stage / n_c) at inference.

  mode 'off' / 'on' decide directly; 'val' compares the stage's validation
  score (`select_metric`) without and with the correction (ties keep it
  off, the authors' form; no validation samples keep it off).
  predict(offset) -> (N, C).
  """
  if mode != 'val':
    return mode == 'on'
  if val_labels.size == 0:
    return False
  score = lambda off: classifiers.select_score(
    np.asarray(predict(off)), val_labels, num_classes, select_metric
  )
  return score(offset + correction) > score(offset)
