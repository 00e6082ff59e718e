"""Training DLSA's flow filter (DESIGN §6): pairs, class-weighted NLL,
purity and balance terms, and selection on validation.

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
- selection: the flow with the best validation cluster purity
  (`flow_select_metric`), evaluated every `eval_every` steps.
"""

import dataclasses
import functools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lcreg_jax import checkpoints as checkpoints_lib
from lcreg_jax import files
from lcreg_jax import loop
from lcreg_jax.dlsa import flow as flow_lib
from lcreg_jax.train_state import all_finite


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
  grad_clip: float | None
  total_steps: int
  batch: int

  @classmethod
  def from_config(cls, cfg, dim: int) -> 'FlowHParams':
    """From the (validated) `config.dlsa` and the feature dimension."""
    return cls(
        num_clusters=int(cfg.num_clusters),
        nll_scale=1.0 / dim if cfg.nll_per_dim else 1.0,
        ema_decay=float(cfg.ema_decay), purity_type=str(cfg.purity_type),
        purity_margin=float(cfg.purity_margin),
        purity_weight=float(cfg.purity_weight),
        balance_weight=float(cfg.balance_weight), lr=float(cfg.flow_lr),
        momentum=float(cfg.flow_momentum), schedule=str(cfg.flow_schedule),
        grad_clip=cfg.flow_grad_clip, total_steps=int(cfg.flow_steps),
        batch=int(cfg.flow_batch_size))


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
  """(optimizer, jitted step); cached so per-stage flows share a compile."""
  lr = (optax.cosine_decay_schedule(hp.lr, hp.total_steps)
        if hp.schedule == 'cosine' else hp.lr)
  tx = optax.sgd(lr, momentum=hp.momentum or None)
  if hp.grad_clip is not None:
    tx = optax.chain(optax.clip_by_global_norm(hp.grad_clip), tx)
  loss_fn = flow_loss_fn(model, hp)

  @jax.jit
  def step(train, key, xs, ys, n, w, starts, counts):
    """train = {params, batch_stats, opt_state, ema, t, centers}."""
    pos, neg = sample_pairs(key, ys, n, starts, counts, hp.batch)
    valid = (ys[pos] != ys[neg]).astype(jnp.float32)
    t = train['t'] + 1.0
    grads, (batch_stats, ema, metrics) = jax.grad(loss_fn, has_aux=True)(
        train['params'], train['batch_stats'], train['centers'], xs[pos],
        xs[neg], w[pos], valid, train['ema'], t)
    updates, opt_state = tx.update(grads, train['opt_state'], train['params'])
    params = optax.apply_updates(train['params'], updates)
    metrics['params_finite'] = all_finite(params)
    return dict(train, params=params, batch_stats=batch_stats,
                opt_state=opt_state, ema=ema, t=t), metrics

  return tx, step


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


def train_flow(x, y, x_val, y_val, *, num_classes: int, config, seed: int,
               workdir: str, fingerprint: dict | None = None,
               pad_to: Optional[int] = None, checkpoint_every: int = 500,
               hooks=(), log: Callable[[str], None] = print,
               name: str = 'flow'):
  """Trains the flow filter through the shared loop; selects on validation.

  Pairs are drawn on the device from a key of (seed, step), so a killed run
  resumes exactly from `workdir/checkpoints`. pad_to pads the training
  arrays to a fixed row count so per-stage flows reuse one compilation.

  Returns:
    (model, variables, centers, info) with the selected variables.
  """
  cfg = config
  n, dim = x.shape
  if n == 0:
    raise ValueError(f'{name}: no training samples')
  k = int(cfg.num_clusters)
  hp = FlowHParams.from_config(cfg, dim)
  model = flow_lib.MAF(dim, cfg.hidden_dim, int(cfg.num_blocks),
                       float(cfg.bn_momentum), float(cfg.bn_eps))
  kc, ki = jax.random.split(jax.random.PRNGKey(seed))
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
  tx, step = _flow_train_fns(model, hp)
  chunk = int(cfg.eval_chunk)
  has_val = y_val.size > 0

  def score(variables):
    _, cv, _ = flow_evaluate(model, variables, centers, x_val, chunk)
    if cfg.flow_select_metric == 'purity':
      return cluster_purity(cv, y_val, k, num_classes)
    _, ct, _ = flow_evaluate(model, variables, centers, x, chunk)
    return heldout_purity(ct, y, cv, y_val, k, num_classes)

  def evaluate(step_num, state):
    current = {'params': state.train['params'],
               'batch_stats': state.train['batch_stats']}
    if not has_val:
      return state.offer(step_num, current, np.nan, always=True), {}
    s = score(current)
    return (state.offer(step_num, current, s),
            {f'val_{cfg.flow_select_metric}': s})

  train = dict(params=variables['params'],
               batch_stats=variables['batch_stats'],
               opt_state=tx.init(variables['params']),
               ema=jnp.zeros((k,), jnp.float32), t=jnp.zeros((), jnp.float32),
               centers=centers)
  initial = score(variables) if has_val else -np.inf
  log(f'{name}: n={n} D={dim} K={k} step 0 val_{cfg.flow_select_metric}='
      f'{initial:.4f}')
  state = loop.Selection.start(train, variables, initial)
  fingerprint = dict(fingerprint or {}, component=name, n_train=n,
                     n_val=int(y_val.size))
  state = loop.fit(
      state, name=name,
      step_fn=lambda s, key: s.advance(step, key, xs, ys, n, w, starts,
                                       counts),
      batches=loop.step_keys(seed + 1), total_steps=hp.total_steps,
      checkpoints=checkpoints_lib.StageCheckpoints(
          files.as_path(workdir) / 'checkpoints', fingerprint),
      workdir=workdir, log_every=int(cfg.eval_every),
      checkpoint_every=checkpoint_every, evaluate_every=int(cfg.eval_every),
      evaluate_fn=evaluate, hooks=hooks,
      advice='Lower --config.dlsa.flow_lr, or set --config.dlsa.'
             'flow_grad_clip.')
  best_score, best_step = float(state.best_score), int(state.best_step)
  log(f'{name}: selected step {best_step} (val_{cfg.flow_select_metric}='
      f'{best_score:.4f})')
  return model, state.best, centers, {'val_score': best_score,
                                      'step': best_step}
