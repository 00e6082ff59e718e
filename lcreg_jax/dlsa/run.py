"""DLSA end to end on frozen features: flow training, likelihood routing and
the staged classifiers (docs/method.md §6).

Every flow and classifier trains through the shared loop with its own
checkpoints under `workdir/<component>/`, so a killed DLSA run resumes where
it stopped; every choice is made on validation, test labels are never read.
"""

import dataclasses
import hashlib
import time
from typing import Callable

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
      raise ValueError(f'{s}: need (N, D) features and (N,) labels, got '
                       f'{x.shape} and {y.shape}')
    if y.size and (y.min() < 0 or y.max() >= num_classes):
      raise ValueError(f'{s}: labels outside [0, {num_classes})')


def run_dlsa(config, *, train, val, test, num_classes: int, workdir: str,
             checkpoint_every: int = 500, hooks=(),
             log: Callable[[str], None] = logging.info) -> DLSAResult:
  """Runs DLSA on frozen features.

  Args:
    config: the validated `config.dlsa` section (`dlsa_config()` with any
      changes). `enabled` is for the caller; run_dlsa runs regardless.
    train, val, test: (features (N, D) float32, labels (N,) int).
    num_classes: C.
    workdir: one folder per component (`flow_<s>`, `classifier_<s>`,
      `classifier_final`) with its checkpoints and TensorBoard events.
    checkpoint_every: steps between checkpoints of each component.
    hooks: the loop's hooks, called as hook(name, step, state).
    log: progress sink.
  Returns:
    DLSAResult; stage s < depth is the s-th cluster-aided classifier,
    stage depth the final ordinary one. Every choice is made on val only.
  """
  t0 = time.time()
  cfg = config
  if any(cfg[f] is None for f in dlsa_config.PRESET_FIELDS):
    # A bare `dlsa_config()` (direct callers): the generic authors' values;
    # full configs get the data set's row in config/validate.py.
    cfg = cfg.copy_and_resolve_references()
    cfg.unlock()
    cfg = dlsa_config.with_preset(cfg)
  c = int(num_classes)
  data = {s: (np.asarray(d[0], np.float32), np.asarray(d[1]).astype(np.int32))
          for s, d in zip(_SPLITS, (train, val, test))}
  _check_features(data, c)
  if cfg.standardize:
    # Stage-1 features are post-ReLU with arbitrary scale; a constant affine
    # map only shifts log p, so routing is unaffected.
    mu = data['train'][0].mean(0)
    sd = data['train'][0].std(0)
    sd = np.where(sd > 1e-6, sd, 1.0)  # Dead (constant) features stay 0.
    data = {s: ((x - mu) / sd, y) for s, (x, y) in data.items()}
  x_of = {s: d[0] for s, d in data.items()}
  y_of = {s: d[1] for s, d in data.items()}
  n_of = {s: y.size for s, y in y_of.items()}
  depth = cfg.depth
  k = cfg.num_clusters
  base_fingerprint = {'dlsa': cfg.to_dict(), 'num_classes': c}
  common = dict(num_classes=c, config=cfg, checkpoint_every=checkpoint_every,
                hooks=hooks, log=log)

  def component(name: str, index: int, *arrays) -> dict:
    # Flows and classifiers each use seeds s and s + 1 (init, steps).
    return dict(common, name=name, workdir=files.as_path(workdir) / name,
                seed=cfg.seed * 1000 + 2 * index,
                fingerprint=dict(base_fingerprint, inputs=digest(*arrays)))

  full_counts = np.bincount(y_of['train'], minlength=c)
  tiny = cfg.balanced_softmax_tiny
  remaining = {s: np.ones(n_of[s], bool) for s in _SPLITS}
  stage_of = {s: np.full(n_of[s], depth, np.int32) for s in _SPLITS}
  probs = {s: np.zeros((n_of[s], c), np.float32) for s in _SPLITS}
  info = {}
  outs = None
  for st in range(depth):
    if outs is None or cfg.flow_per_stage:
      tr, va = remaining['train'], remaining['val']
      flow_inputs = (x_of['train'][tr], y_of['train'][tr], x_of['val'][va],
                     y_of['val'][va])
      model, variables, centers, finfo = flow_training.train_flow(
          *flow_inputs, pad_to=n_of['train'],
          **component(f'flow_{st}', st, *flow_inputs))
      flow_info = {'flow_n_train': int(tr.sum()),
                   'flow_select_score': float(finfo['val_score']),
                   'flow_step': int(finfo['step'])}
      outs = {s: flow_training.flow_evaluate(model, variables, centers,
                                             x_of[s], cfg.eval_chunk)
              for s in _SPLITS}
    logp = {s: outs[s][0] for s in _SPLITS}
    cluster = {s: outs[s][1] for s in _SPLITS}
    routed_tr, thr = routing.route_stage(logp['train'], remaining['train'],
                                         cfg.top_fraction)
    routed = {'train': routed_tr}
    for s in ('val', 'test'):
      routed[s] = routing.route_by_threshold(logp[s], remaining[s], thr)
    info[st] = dict(flow_info, threshold=thr,
                    train_routed=int(routed_tr.sum()))
    if not routed_tr.any():
      log(f'stage {st}: no training samples left to route; skipped')
      continue
    # The authors build the prior from every training sample under this
    # stage's flow, not only from the ones the stage takes.
    on_prior = (np.ones(n_of['train'], bool)
                if cfg.cluster_prior_from == 'all' else routed_tr)
    prior = routing.cluster_prior_matrix(
        cluster['train'][on_prior], y_of['train'][on_prior], k, c)

    def inputs(s, mask, prior=prior):
      x = x_of[s][mask]
      z = outs[s][2][mask] if cfg.use_flow_latent else x
      return x, np.concatenate([z, prior[cluster[s][mask]]], 1)

    model_c = classifiers.ClusterAidedClassifier(c)
    args = (inputs('train', routed_tr), y_of['train'][routed_tr],
            inputs('val', routed['val']), y_of['val'][routed['val']])
    params, offset, cinfo = classifiers.train_classifier(
        model_c, *args, pad_train=n_of['train'], pad_val=n_of['val'],
        **component(f'classifier_{st}', depth + st, *args[0], args[1],
                    *args[2], args[3]))
    info[st]['val_selection_accuracy'] = cinfo['val_accuracy']
    correction = classifiers.prior_correction(
        np.bincount(args[1], minlength=c), full_counts, tiny)
    use = choose_prior_correction(
        cfg.stage_prior_correction,
        lambda off: classifiers.predict_probs(
            model_c, params, off, inputs('val', routed['val']),
            cfg.eval_chunk), offset, correction, y_of['val'][routed['val']])
    info[st]['prior_correction'] = use
    if use:
      offset = offset + correction
    for s in ('val', 'test'):
      probs[s][routed[s]] = classifiers.predict_probs(
          model_c, params, offset, inputs(s, routed[s]), cfg.eval_chunk)
    for s in _SPLITS:
      stage_of[s][routed[s]] = st
      remaining[s] &= ~routed[s]

  # Final ordinary classifier on whatever no stage took; its balanced
  # softmax uses the full training counts (authors) or the remaining ones.
  model_f = classifiers.LinearClassifier(c)
  final_counts = full_counts if cfg.final_counts == 'full' else None

  def final_classifier(name, index, rem):
    args = ((x_of['train'][rem['train']],), y_of['train'][rem['train']],
            (x_of['val'][rem['val']],), y_of['val'][rem['val']])
    params, offset, cinfo = classifiers.train_classifier(
        model_f, *args, balanced=cfg.final_balanced_softmax,
        prior_counts=final_counts, pad_train=n_of['train'],
        pad_val=n_of['val'],
        **component(name, index, args[0][0], args[1], args[2][0], args[3]))
    return cinfo, {s: classifiers.predict_probs(
        model_f, params, offset, (x_of[s][rem[s]],), cfg.eval_chunk)
                   for s in ('val', 'test')}

  rem = remaining
  cinfo, final_probs = final_classifier('classifier_final', 2 * depth, rem)
  for s in ('val', 'test'):
    probs[s][rem[s]] = final_probs[s]
  info[depth] = {'threshold': -np.inf, 'train_routed': int(rem['train'].sum()),
                 'val_selection_accuracy': cinfo['val_accuracy']}

  def accuracy(s, mask):
    if not mask.any():
      return float('nan')
    return float(losses.top1(probs[s][mask], y_of[s][mask]))

  report = {}
  for st in range(depth + 1):
    on = {s: stage_of[s] == st for s in ('val', 'test')}
    report[st] = {
        'share': float(on['test'].mean()) if n_of['test'] else float('nan'),
        'accuracy': accuracy('test', on['test']),
        'train_routed': int((stage_of['train'] == st).sum()),
        'val_share': float(on['val'].mean()) if n_of['val'] else float('nan'),
        'val_accuracy': accuracy('val', on['val']),
        'threshold': float(info.get(st, {}).get('threshold', np.inf)),
    }
  for st in range(depth):
    for key in ('flow_n_train', 'flow_select_score', 'flow_step',
                'prior_correction'):
      if key in info.get(st, {}):
        report[st][key] = info[st][key]
  val_acc = accuracy('val', np.ones(n_of['val'], bool))
  log(f'DLSA: val_acc={val_acc:.4f} in {time.time() - t0:.1f}s; stages: ' +
      ', '.join(f'{st}: share={r["share"]:.3f} acc={r["accuracy"]:.4f}'
                for st, r in report.items()))
  control_probs = control_val = None
  if cfg.depth0_control:
    if depth == 0:  # DLSA itself is the control.
      control_probs, control_val = probs['test'], val_acc
    else:
      # The same final classifier (seed index 0, as in a depth-0 run) on all
      # training samples: what routing adds is DLSA minus this row.
      everything = {s: np.ones(n_of[s], bool) for s in _SPLITS}
      _, cprobs = final_classifier('classifier_depth0', 0, everything)
      control_probs = cprobs['test']
      control_val = float('nan')
      if n_of['val']:
        control_val = float(losses.top1(np.asarray(cprobs['val']), y_of['val']))
    log(f'DLSA depth-0 control: val_acc={control_val:.4f}')
  return DLSAResult(test_probs=probs['test'], test_stage=stage_of['test'],
                    val_accuracy=val_acc, stage_report=report,
                    train_stage=stage_of['train'],
                    control_test_probs=control_probs,
                    control_val_accuracy=control_val)


def choose_prior_correction(mode: str, predict, offset, correction,
                            val_labels) -> bool:
  """Whether a stage adds log(n_c,stage / n_c) at inference.

  mode 'off' / 'on' decide directly; 'val' compares the stage's validation
  accuracy without and with the correction (ties keep it off, the authors'
  form; no validation samples keep it off). predict(offset) -> (N, C).
  """
  if mode != 'val':
    return mode == 'on'
  if val_labels.size == 0:
    return False
  acc = lambda off: float(losses.top1(np.asarray(predict(off)), val_labels))
  return acc(offset + correction) > acc(offset)
