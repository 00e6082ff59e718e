"""DLSA end to end: flow training, likelihood routing, staged classifiers.

Choices where DESIGN §6 leaves room (each documented where it is made):
- pairs: the positive is uniform over training samples, the negative
  uniform over the samples of all other classes (`sample_pairs`);
- NLL: positives only, weights normalised to Σ_c n_c w_c = N, in nats per
  dimension (`nll_per_dim`); SGD is clipped (`flow_grad_clip`) and
  cosine-decayed (`flow_schedule`);
- purity: the cross-entropy of the negative's posterior against the
  positive's stop-gradient posterior is pushed *up* (hinge), since lowering
  it would merge the pair's clusters (`purity_type`, `purity_margin`);
- balance: bias-corrected EMA of the positives' mean posterior, KL to
  uniform;
- selection: flow on val cluster purity (`flow_select_metric`), every
  classifier on val top-1 of the samples routed to it; test labels are
  only read for the final report.
"""

import dataclasses
import functools
import json
import math
import os
import time
from typing import Callable, Optional

from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lcreg_jax.dlsa import flow as flow_lib
from lcreg_jax.dlsa import routing
from lcreg_jax.dlsa.config import get_dlsa_config
from lcreg_jax.errors import ConfigError

_SPLITS = ('train', 'val', 'test')


@dataclasses.dataclass
class DLSAResult:
  test_probs: np.ndarray  # (N_test, C) float32.
  test_stage: np.ndarray  # (N_test,) 0..depth-1 cluster-aided, depth final.
  val_accuracy: float
  stage_report: dict  # stage -> {'share', 'accuracy', 'train_routed', ...}.


def class_nll_weights(labels: np.ndarray, num_classes: int,
                      power: float = 2.0) -> np.ndarray:
  """Per-class NLL weights ∝ (n_max / n_c)^power, normalised so Σ_c n_c w_c = N.

  With that normalisation the weighted NLL of uniformly drawn samples keeps
  the scale of the plain NLL. Absent classes get weight 0.
  """
  counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
  w = np.zeros(num_classes)
  present = counts > 0
  w[present] = (counts.max() / counts[present])**power
  w *= counts.sum() / np.sum(counts * w)
  return w.astype(np.float32)


def sample_pairs(key, sorted_labels, n, starts, counts, batch: int):
  """Positives uniform over samples, negatives uniform over other classes.

  Samples are sorted by class, so the other-class samples are the index
  range [0, n) minus [start_y, start_y + n_y): draw j < n - n_y and skip
  the block. Exact and O(batch); a single-class set returns same-class
  pairs, which the caller masks out of the purity term. Rows >= n of
  sorted_labels are padding and never drawn.
  """
  kp, kn = jax.random.split(key)
  pos = jax.random.randint(kp, (batch,), 0, n)
  yp = sorted_labels[pos]
  j = jax.random.randint(kn, (batch,), 0, jnp.maximum(n - counts[yp], 1))
  neg = jnp.where(j < starts[yp], j, j + counts[yp])
  return pos, jnp.minimum(neg, n - 1)


def _histogram(clusters, labels, num_clusters, num_classes):
  h = np.zeros((num_clusters, num_classes), np.int64)
  np.add.at(h, (clusters, labels), 1)
  return h


def cluster_purity(clusters, labels, num_clusters, num_classes) -> float:
  """Σ_k max_c n_kc / N of a clustering."""
  if labels.size == 0:
    return float('nan')
  h = _histogram(clusters, labels, num_clusters, num_classes)
  return float(h.max(1).sum() / labels.size)


def heldout_purity(train_clusters, train_labels, clusters, labels,
                   num_clusters, num_classes) -> float:
  """Share of samples whose class is their cluster's training majority."""
  if labels.size == 0:
    return float('nan')
  h = _histogram(train_clusters, train_labels, num_clusters, num_classes)
  ok = (h.sum(1) > 0)[clusters] & (h.argmax(1)[clusters] == labels)
  return float(ok.mean())


@dataclasses.dataclass(frozen=True)
class FlowHParams:
  """Hashable copy of the flow-training knobs (keys the jit cache)."""
  num_clusters: int
  nll_scale: float
  ema_decay: float
  purity_type: str
  purity_margin: float
  purity_weight: float
  balance_weight: float
  lr: float
  momentum: float
  schedule: str
  grad_clip: float
  total_steps: int
  batch: int
  every: int

  @classmethod
  def from_config(cls, cfg, dim: int) -> 'FlowHParams':
    if cfg.purity_type not in ('hinge_ce', 'overlap'):
      raise ConfigError(f'unknown purity_type {cfg.purity_type!r}')
    if cfg.flow_schedule not in ('cosine', 'constant'):
      raise ConfigError(f'unknown flow_schedule {cfg.flow_schedule!r}')
    every = max(1, int(cfg.eval_every))
    return cls(
        num_clusters=int(cfg.num_clusters),
        nll_scale=1.0 / dim if cfg.nll_per_dim else 1.0,
        ema_decay=float(cfg.ema_decay), purity_type=str(cfg.purity_type),
        purity_margin=float(cfg.purity_margin),
        purity_weight=float(cfg.purity_weight),
        balance_weight=float(cfg.balance_weight), lr=float(cfg.flow_lr),
        momentum=float(cfg.flow_momentum), schedule=str(cfg.flow_schedule),
        grad_clip=float(cfg.flow_grad_clip),
        total_steps=max(1, -(-int(cfg.flow_steps) // every)) * every,
        batch=int(cfg.flow_batch_size), every=every)


def flow_loss_fn(model: flow_lib.MAF, hp: FlowHParams):
  """Loss of one batch of (positive, negative) pairs (DESIGN §6).

  Returns loss_fn(params, batch_stats, centers, xp, xn, wp, valid, ema, t)
  -> (total, (new batch_stats, new ema, metrics)); wp are the positives'
  class weights, valid masks pairs that really differ in class, ema is the
  running mean posterior and t the 1-based step (for bias correction).
  """
  log_k = math.log(hp.num_clusters)
  decay = hp.ema_decay
  sg = jax.lax.stop_gradient

  def loss_fn(params, batch_stats, centers, xp, xn, wp, valid, ema, t):
    b = xp.shape[0]
    # One pass over both halves so BN statistics see the whole batch.
    (z, logdet), upd = model.apply(
        {'params': params, 'batch_stats': batch_stats},
        jnp.concatenate([xp, xn]), train=True, mutable=['batch_stats'])
    logp_z, ell = flow_lib.mixture_log_prob(z, centers)
    # Only positives are uniform over the data, so only they carry the
    # class-weighted NLL (the weights assume that sampling distribution).
    nll = -jnp.mean(wp * (logp_z + logdet)[:b]) * hp.nll_scale
    logq = jax.nn.log_softmax(ell, -1)
    p_pos = jnp.exp(logq[:b])
    if hp.purity_type == 'hinge_ce':
      ce = -jnp.sum(sg(p_pos) * logq[b:], -1)
      per_pair = jax.nn.relu(log_k + hp.purity_margin - ce)
    else:  # 'overlap'
      overlap = jnp.sum(sg(p_pos) * jnp.exp(logq[b:]), -1)
      per_pair = -jnp.log1p(-jnp.minimum(overlap, 1.0 - 1e-6))
    purity = jnp.sum(per_pair * valid) / jnp.maximum(valid.sum(), 1.0)
    ema = decay * ema + (1.0 - decay) * p_pos.mean(0)
    ema_hat = ema / (1.0 - decay**t)  # Bias correction of the zero start.
    balance = jnp.sum(ema_hat * jnp.log(ema_hat + 1e-12)) + log_k
    total = nll + hp.purity_weight * purity + hp.balance_weight * balance
    metrics = {'loss': total, 'nll': nll, 'purity': purity,
               'balance': balance}
    return total, (upd['batch_stats'], sg(ema), metrics)

  return loss_fn


@functools.lru_cache(maxsize=None)
def _flow_train_fns(model: flow_lib.MAF, hp: FlowHParams):
  """(optimizer, jitted chunk of `every` steps); cached across stages."""
  lr = (optax.cosine_decay_schedule(hp.lr, hp.total_steps)
        if hp.schedule == 'cosine' else hp.lr)
  tx = optax.sgd(lr, momentum=hp.momentum or None)
  if hp.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(hp.grad_clip), tx)
  loss_fn = flow_loss_fn(model, hp)

  @jax.jit
  def run_chunk(state, key, centers, xs, ys, n, w, starts, counts):
    def step(state, key):
      params, batch_stats, opt_state, ema, t = state
      pos, neg = sample_pairs(key, ys, n, starts, counts, hp.batch)
      valid = (ys[pos] != ys[neg]).astype(jnp.float32)
      t = t + 1.0
      grads, (batch_stats, ema, metrics) = jax.grad(loss_fn, has_aux=True)(
          params, batch_stats, centers, xs[pos], xs[neg], w[pos], valid, ema,
          t)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      return (params, batch_stats, opt_state, ema, t), metrics
    state, metrics = jax.lax.scan(step, state,
                                  jax.random.split(key, hp.every))
    return state, jax.tree.map(jnp.mean, metrics)

  return tx, run_chunk


@functools.lru_cache(maxsize=None)
def _flow_init_fn(model: flow_lib.MAF):
  # One compile instead of one eager RNG compile per parameter shape.
  return jax.jit(functools.partial(model.init, train=True))


@functools.lru_cache(maxsize=None)
def _flow_outputs_jit(model: flow_lib.MAF):
  return jax.jit(functools.partial(flow_lib.flow_outputs, model))


def flow_evaluate(model, variables, centers, x, chunk: int = 4096):
  """(logp, cluster, z) of all rows of x in eval mode.

  Rows go through in `chunk`-row padded blocks so every split shares one
  compilation.
  """
  fn = _flow_outputs_jit(model)
  outs = []
  for i in range(0, x.shape[0], chunk):
    part = np.asarray(x[i:i + chunk], np.float32)
    res = fn(variables, jnp.asarray(
        np.pad(part, ((0, chunk - part.shape[0]), (0, 0)))), centers)
    outs.append([np.asarray(r)[:part.shape[0]] for r in res])
  if not outs:
    return (np.zeros(0, np.float32), np.zeros(0, np.int32),
            np.zeros((0, x.shape[1]), np.float32))
  return tuple(np.concatenate(o, 0) for o in zip(*outs))


def train_flow(x, y, x_val, y_val, *, num_classes: int, config, key,
               pad_to: Optional[int] = None,
               log: Callable[[str], None] = print, name: str = 'flow'):
  """Trains the flow filter; selects the checkpoint on validation purity.

  pad_to pads the training arrays to a fixed row count so per-stage flows
  reuse one compilation.

  Returns:
    (model, variables, centers, info).
  """
  cfg = config
  n, dim = x.shape
  if n == 0:
    raise ValueError(f'{name}: no training samples')
  k = int(cfg.num_clusters)
  hp = FlowHParams.from_config(cfg, dim)
  if cfg.flow_select_metric not in ('purity', 'heldout'):
    raise ConfigError(
        f'unknown flow_select_metric {cfg.flow_select_metric!r}')
  model = flow_lib.MAF(dim, int(cfg.hidden_dim), int(cfg.num_blocks),
                       float(cfg.bn_momentum), float(cfg.bn_eps))
  kc, ki, key = jax.random.split(key, 3)
  centers = flow_lib.make_centers(kc, k, dim, cfg.center_std)
  order = np.argsort(y, kind='stable')
  ys_np = y[order].astype(np.int32)
  counts_np = np.bincount(ys_np, minlength=num_classes).astype(np.int32)
  rows = max(pad_to or 0, n)
  pad = lambda a: jnp.asarray(
      np.pad(a, [(0, rows - n)] + [(0, 0)] * (a.ndim - 1)))
  xs = pad(x[order].astype(np.float32))
  ys = pad(ys_np)
  w = pad(class_nll_weights(ys_np, num_classes, cfg.nll_weight_power)[ys_np])
  counts = jnp.asarray(counts_np)
  starts = jnp.asarray(np.cumsum(counts_np) - counts_np)
  variables = _flow_init_fn(model)(ki, xs[:2])
  tx, run_chunk = _flow_train_fns(model, hp)
  chunk = int(cfg.eval_chunk)

  def score(variables):
    _, cv, _ = flow_evaluate(model, variables, centers, x_val, chunk)
    if cfg.flow_select_metric == 'purity':
      return cluster_purity(cv, y_val, k, num_classes)
    _, ct, _ = flow_evaluate(model, variables, centers, x, chunk)
    return heldout_purity(ct, y, cv, y_val, k, num_classes)

  has_val = y_val.size > 0
  state = (variables['params'], variables['batch_stats'],
           tx.init(variables['params']),
           jnp.zeros((k,), jnp.float32), jnp.zeros((), jnp.float32))
  best_score = score(variables) if has_val else -np.inf
  best = (best_score, variables, 0)
  log(f'{name}: n={n} D={dim} K={k} step 0 val_{cfg.flow_select_metric}='
      f'{best_score:.4f}')
  for c in range(hp.total_steps // hp.every):
    key, sub = jax.random.split(key)
    new_state, m = run_chunk(state, sub, centers, xs, ys, n, w, starts,
                             counts)
    m = {kk: float(v) for kk, v in m.items()}
    step = (c + 1) * hp.every
    if not all(np.isfinite(list(m.values()))):
      log(f'{name}: non-finite loss at step ~{step} ({m}); stopping and '
          'keeping the best checkpoint so far')
      break
    state = new_state
    current = {'params': state[0], 'batch_stats': state[1]}
    s = score(current) if has_val else -np.inf
    if s > best[0] or not has_val:
      best = (s, current, step)
    log(f'{name}: step {step} loss={m["loss"]:.4f} nll={m["nll"]:.4f} '
        f'purity={m["purity"]:.4f} balance={m["balance"]:.4f} '
        f'val_{cfg.flow_select_metric}={s:.4f}')
  log(f'{name}: selected step {best[2]} (val_{cfg.flow_select_metric}='
      f'{best[0]:.4f})')
  return model, best[1], centers, {'val_score': best[0], 'step': best[2]}


def _resolve_config(config) -> ml_collections.ConfigDict:
  """Defaults overridden by `config` (or `config.dlsa`); typos are errors."""
  cfg = get_dlsa_config()
  if config is None:
    return cfg
  src = config.dlsa if 'dlsa' in config else config
  src = src.to_dict() if hasattr(src, 'to_dict') else dict(src)
  unknown = sorted(set(src) - set(cfg.keys()))
  if unknown:
    raise ConfigError(f'unknown DLSA config keys: {unknown}')
  cfg.update(src)
  if not 0.0 < cfg.top_fraction < 1.0:
    raise ConfigError(f'top_fraction must be in (0, 1), got {cfg.top_fraction}')
  if cfg.depth < 0:
    raise ConfigError(f'depth must be >= 0, got {cfg.depth}')
  return cfg


def _save_tree(path, tree):
  flat = traverse_util.flatten_dict(jax.device_get(tree), sep='/')
  np.savez(path, **{k: np.asarray(v) for k, v in flat.items()})


def run_dlsa(config, *, train, val, test, num_classes: int, workdir: str,
             log: Callable[[str], None] = print) -> DLSAResult:
  """Runs DLSA on frozen features.

  Args:
    config: get_dlsa_config() (possibly partial) or a config with a `dlsa`
      field. `enabled` is for the caller; run_dlsa runs regardless.
    train, val, test: (features (N, D) float32, labels (N,) int).
    num_classes: C.
    workdir: receives dlsa_flow_<stage>.npz (flow variables, prior centres,
      the standardisation mean/std), dlsa_classifier_<stage|final>.npz
      (parameters, cluster prior) and dlsa_report.json.
    log: progress sink.
  Returns:
    DLSAResult; stage s < depth is the s-th cluster-aided classifier,
    stage depth the final ordinary one. Checkpoints are chosen on val only.
  """
  t0 = time.time()
  cfg = _resolve_config(config)
  c = int(num_classes)
  data = {s: (np.asarray(d[0], np.float32), np.asarray(d[1]).astype(np.int32))
          for s, d in zip(_SPLITS, (train, val, test))}
  for s, (x, y) in data.items():
    if x.ndim != 2 or y.shape != (x.shape[0],):
      raise ConfigError(f'{s}: need (N, D) features and (N,) labels, got '
                        f'{x.shape} and {y.shape}')
    if y.size and (y.min() < 0 or y.max() >= c):
      raise ConfigError(f'{s}: labels outside [0, {c})')
  mu = np.zeros(data['train'][0].shape[1], np.float32)
  sd = np.ones_like(mu)
  if cfg.standardize:
    mu = data['train'][0].mean(0)
    sd = data['train'][0].std(0)
    sd = np.where(sd > 1e-6, sd, 1.0)  # Dead (constant) features stay 0.
    data = {s: ((x - mu) / sd, y) for s, (x, y) in data.items()}
  x_of = {s: d[0] for s, d in data.items()}
  y_of = {s: d[1] for s, d in data.items()}
  n_of = {s: y.size for s, y in y_of.items()}
  os.makedirs(workdir, exist_ok=True)
  key = jax.random.PRNGKey(cfg.seed)
  depth = int(cfg.depth)
  k = int(cfg.num_clusters)

  remaining = {s: np.ones(n_of[s], bool) for s in _SPLITS}
  stage_of = {s: np.full(n_of[s], depth, np.int32) for s in _SPLITS}
  probs = {s: np.zeros((n_of[s], c), np.float32) for s in _SPLITS}
  info = {}
  outs = None
  for st in range(depth):
    if outs is None or cfg.flow_per_stage:
      key, sub = jax.random.split(key)
      tr, va = remaining['train'], remaining['val']
      model, variables, centers, finfo = train_flow(
          x_of['train'][tr], y_of['train'][tr], x_of['val'][va],
          y_of['val'][va], num_classes=c, config=cfg, key=sub,
          pad_to=n_of['train'], log=log, name=f'flow[{st}]')
      _save_tree(os.path.join(workdir, f'dlsa_flow_{st}.npz'),
                 {'variables': variables, 'centers': centers,
                  'feature_mean': mu, 'feature_std': sd})
      outs = {s: flow_evaluate(model, variables, centers, x_of[s],
                               int(cfg.eval_chunk)) for s in _SPLITS}
    logp = {s: outs[s][0] for s in _SPLITS}
    cluster = {s: outs[s][1] for s in _SPLITS}
    routed_tr, thr = routing.route_stage(logp['train'], remaining['train'],
                                         cfg.top_fraction)
    routed = {'train': routed_tr}
    for s in ('val', 'test'):
      routed[s] = routing.route_by_threshold(logp[s], remaining[s], thr)
    info[st] = {'threshold': thr, 'train_routed': int(routed_tr.sum())}
    if not routed_tr.any():
      log(f'stage {st}: no training samples left to route; skipped')
      continue
    prior = routing.cluster_prior_matrix(
        cluster['train'][routed_tr], y_of['train'][routed_tr], k, c)

    def inputs(s, mask, prior=prior):
      x = x_of[s][mask]
      z = outs[s][2][mask] if cfg.use_flow_latent else x
      return x, np.concatenate([z, prior[cluster[s][mask]]], 1)

    model_c = routing.ClusterAidedClassifier(c)
    key, sub = jax.random.split(key)
    params, offset, cinfo = routing.train_classifier(
        model_c, inputs('train', routed_tr), y_of['train'][routed_tr],
        inputs('val', routed['val']), y_of['val'][routed['val']],
        num_classes=c, config=cfg, key=sub, pad_train=n_of['train'],
        pad_val=n_of['val'], log=log, name=f'stage[{st}]')
    info[st]['val_selection_accuracy'] = cinfo['val_accuracy']
    _save_tree(os.path.join(workdir, f'dlsa_classifier_{st}.npz'),
               {'params': params, 'cluster_prior': prior})
    for s in ('val', 'test'):
      probs[s][routed[s]] = routing.predict_probs(
          model_c, params, offset, inputs(s, routed[s]), cfg.eval_chunk)
    for s in _SPLITS:
      stage_of[s][routed[s]] = st
      remaining[s] &= ~routed[s]

  # Final ordinary classifier on whatever no stage took.
  model_f = routing.LinearClassifier(c)
  key, sub = jax.random.split(key)
  rem = remaining
  params, offset, cinfo = routing.train_classifier(
      model_f, (x_of['train'][rem['train']],), y_of['train'][rem['train']],
      (x_of['val'][rem['val']],), y_of['val'][rem['val']], num_classes=c,
      config=cfg, key=sub, balanced=cfg.final_balanced_softmax,
      pad_train=n_of['train'], pad_val=n_of['val'], log=log,
      name=f'final[{depth}]')
  _save_tree(os.path.join(workdir, 'dlsa_classifier_final.npz'),
             {'params': params})
  for s in ('val', 'test'):
    probs[s][rem[s]] = routing.predict_probs(
        model_f, params, offset, (x_of[s][rem[s]],), cfg.eval_chunk)
  info[depth] = {'threshold': -np.inf, 'train_routed': int(rem['train'].sum()),
                 'val_selection_accuracy': cinfo['val_accuracy']}

  def accuracy(s, mask):
    if not mask.any():
      return float('nan')
    return float(np.mean(probs[s][mask].argmax(1) == y_of[s][mask]))

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
  val_acc = accuracy('val', np.ones(n_of['val'], bool))
  test_acc = accuracy('test', np.ones(n_of['test'], bool))
  with open(os.path.join(workdir, 'dlsa_report.json'), 'w') as f:
    json.dump({'stages': {str(kk): v for kk, v in report.items()},
               'val_accuracy': val_acc, 'test_accuracy': test_acc,
               'config': cfg.to_dict()}, f, indent=2)
  log(f'DLSA: val_acc={val_acc:.4f} test_acc={test_acc:.4f} in '
      f'{time.time() - t0:.1f}s; stages: ' + ', '.join(
          f'{st}: share={r["share"]:.3f} acc={r["accuracy"]:.4f}'
          for st, r in report.items()))
  return DLSAResult(test_probs=probs['test'], test_stage=stage_of['test'],
                    val_accuracy=val_acc, stage_report=report)
