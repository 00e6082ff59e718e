"""Training DLSA's flow filter (docs/method.md §6): pairs, class-weighted NLL,
purity and balance terms, and checkpoint selection.

Defaults follow the authors' code (silicx/DLSA); each deviation is a switch:
- pairs: two distinct classes uniformly, then one sample of each
  (`pair_sampling='class_uniform'`); 'sample_uniform' draws the positive
  uniformly over samples and the negative over the other classes' samples;
- NLL of the positives only, class weights (n_max/n_c)^power normalised to
  Σ_c w_c = 1 (`nll_weight_norm`), the full D-dimensional NLL
  (`nll_per_dim`), times λ_lh (`nll_weight`);
- purity: `neg_ce` is the authors' linear Σ_k sg(p_pos)_k log p_neg,k;
  `hinge_ce` and `overlap` are bounded alternatives;
- balance: KL(bias-corrected EMA of the positives' mean posterior ‖ uniform),
  the gradient flowing through the current batch's share;
- plain SGD at a constant lr without clipping (`flow_schedule`,
  `flow_grad_clip`);
- selection: the authors' count of pure, non-tiny clusters on the flow's
  training samples with a cap on the largest cluster (a fixed 5000, or
  N / K × `select_cap_factor`), or validation purity (`flow_select_metric`),
  checked once per epoch (`flow_eval_every`).
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
from lcreg_jax.dlsa import rows
from lcreg_jax.train_state import all_finite


def class_nll_weights(
  labels: np.ndarray,
  num_classes: int,
  power: float = 2.0,
  norm: str = 'classes',
) -> np.ndarray:
  """Per-class NLL weights ∝ (n_max / n_c)^power; absent classes get 0.

  norm='classes' (authors): Σ_c w_c = 1 over the present classes, so the
  weights average 1/C and the NLL term is ~1/C of a plain mean NLL.
  norm='samples': Σ_c n_c w_c = N, so the weighted NLL of uniformly drawn
  samples keeps the scale of the plain NLL.
  """
  counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
  w = np.zeros(num_classes)
  present = counts > 0
  w[present] = (counts.max() / counts[present]) ** power
  if norm == 'classes':
    w /= w.sum()
  else:
    w *= counts.sum() / np.sum(counts * w)
  return w.astype(np.float32)


def sample_class_pairs(key, classes, num_present, starts, counts, batch: int):
  """The authors' pairs: two distinct classes uniformly, one sample of each.

  classes[:num_present] are the present class ids (padding after), samples
  are sorted by class (class c occupies [starts[c], starts[c] + counts[c])).
  The negative's class is drawn from the other num_present - 1 classes by
  skipping the positive's slot, so it always differs; with a single class
  the pair is same-class and the caller masks it out of the purity term.
  """
  ka, kb, kp, kn = jax.random.split(key, 4)
  a = jax.random.randint(ka, (batch,), 0, num_present)
  b = jax.random.randint(kb, (batch,), 0, jnp.maximum(num_present - 1, 1))
  b = jnp.where(num_present > 1, jnp.where(b >= a, b + 1, b), a)
  yp, yn = classes[a], classes[b]
  pos = starts[yp] + jax.random.randint(kp, (batch,), 0, counts[yp])
  neg = starts[yn] + jax.random.randint(kn, (batch,), 0, counts[yn])
  return pos, neg


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


def within_cap(
  largest: int, n: int, num_clusters: int, cap: int | None, cap_factor: float
) -> bool:
  """The authors' cap on the largest cluster: below `cap` (their code's
  fixed 5000); cap None: at most N / K * cap_factor samples."""
  if cap is not None:
    return largest < cap
  return largest <= n / num_clusters * cap_factor


def authors_selection_score(
  clusters,
  labels,
  num_clusters,
  num_classes,
  min_purity: float = 0.7,
  min_size: int = 10,
  cap: int | None = 5000,
  cap_factor: float = 20.0,
) -> float | None:
  """The authors' flow-selection metric on the flow's training samples.

  The number of clusters with purity > min_purity and more than min_size
  samples; None when the largest cluster is over the cap (`within_cap`):
  such a flow is no candidate. It reads training labels only, never test.
  """
  if labels.size == 0:
    return float('nan')
  h = _histogram(clusters, labels, num_clusters, num_classes)
  size = h.sum(1)
  if not within_cap(size.max(), labels.size, num_clusters, cap, cap_factor):
    return None
  purity = h.max(1) / np.maximum(size, 1)
  return float(np.sum((purity > min_purity) & (size > min_size)))


def heldout_purity(
  train_clusters, train_labels, clusters, labels, num_clusters, num_classes
) -> float:
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
  pair_sampling: str = 'class_uniform'
  separate_passes: bool = True

  @classmethod
  def from_config(cls, cfg, dim: int) -> 'FlowHParams':
    """From the (validated) `config.dlsa` and the feature dimension."""
    return cls(
      num_clusters=cfg.num_clusters,
      # λ_lh, and 1/D for the per-dimension variant.
      nll_scale=cfg.nll_weight / (dim if cfg.nll_per_dim else 1.0),
      ema_decay=cfg.ema_decay,
      purity_type=cfg.purity_type,
      purity_margin=cfg.purity_margin,
      purity_weight=cfg.purity_weight,
      balance_weight=cfg.balance_weight,
      lr=cfg.flow_lr,
      momentum=cfg.flow_momentum,
      schedule=cfg.flow_schedule,
      grad_clip=cfg.flow_grad_clip,
      total_steps=cfg.flow_steps,
      batch=cfg.flow_batch_size,
      pair_sampling=cfg.pair_sampling,
      separate_passes=cfg.flow_separate_passes,
    )


def neg_ce_purity(p_pos, logq_neg):
  """Σ_k p_pos,k log p_neg,k per pair (the authors' purity term).

  Minimising it lowers log p_neg,k most where p_pos,k is largest, pushing
  the negative's posterior away from the positive's cluster. The caller
  stops the positive's gradient (the authors' `contrast_freeze`).
  """
  return jnp.sum(p_pos * logq_neg, -1)


def balance_term(mean_posterior, ema, t, decay: float):
  """KL(ema_hat ‖ uniform) and the new (stop-gradient) EMA.

  ema_t = decay ema_{t-1} + (1 - decay) mean_posterior, bias-corrected by
  1 / (1 - decay^t) for the zero start; the gradient flows through the
  current batch's share only (ema_{t-1} is a constant).
  """
  k = mean_posterior.shape[-1]
  new = decay * jax.lax.stop_gradient(ema) + (1.0 - decay) * mean_posterior
  ema_hat = new / (1.0 - decay**t)
  kl = jnp.sum(ema_hat * jnp.log(ema_hat + 1e-12)) + math.log(k)
  return kl, jax.lax.stop_gradient(new)


def flow_loss_fn(model: flow_lib.MAF, hp: FlowHParams):
  """Loss of one batch of (positive, negative) pairs (docs/method.md §6).

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
    if hp.separate_passes:
      # The authors run positives and negatives as two train-mode batches:
      # each half is normalised with its own BatchNorm statistics and the
      # running statistics are updated twice.
      (zp, ldp), upd = model.apply(
        {'params': params, 'batch_stats': batch_stats},
        xp,
        train=True,
        mutable=['batch_stats'],
      )
      (zn, ldn), upd = model.apply(
        {'params': params, 'batch_stats': upd['batch_stats']},
        xn,
        train=True,
        mutable=['batch_stats'],
      )
      z, logdet = jnp.concatenate([zp, zn]), jnp.concatenate([ldp, ldn])
    else:
      # One pass over both halves: BN statistics see the whole batch.
      (z, logdet), upd = model.apply(
        {'params': params, 'batch_stats': batch_stats},
        jnp.concatenate([xp, xn]),
        train=True,
        mutable=['batch_stats'],
      )
    logp_z, ell = flow_lib.mixture_log_prob(z, centers)
    # Only positives are uniform over the data, so only they carry the
    # class-weighted NLL (the weights assume that sampling distribution).
    nll = -jnp.mean(wp * (logp_z + logdet)[:b]) * hp.nll_scale
    logq = jax.nn.log_softmax(ell, -1)
    p_pos = jnp.exp(logq[:b])
    if hp.purity_type == 'neg_ce':
      per_pair = neg_ce_purity(sg(p_pos), logq[b:])
    elif hp.purity_type == 'hinge_ce':
      ce = -jnp.sum(sg(p_pos) * logq[b:], -1)
      per_pair = jax.nn.relu(log_k + hp.purity_margin - ce)
    else:  # 'overlap'
      overlap = jnp.sum(sg(p_pos) * jnp.exp(logq[b:]), -1)
      per_pair = -jnp.log1p(-jnp.minimum(overlap, 1.0 - 1e-6))
    purity = jnp.sum(per_pair * valid) / jnp.maximum(valid.sum(), 1.0)
    balance, ema = balance_term(p_pos.mean(0), ema, t, decay)
    total = nll + hp.purity_weight * purity + hp.balance_weight * balance
    metrics = {'loss': total, 'nll': nll, 'purity': purity, 'balance': balance}
    return total, (upd['batch_stats'], sg(ema), metrics)

  return loss_fn


@functools.lru_cache(maxsize=None)
def flow_train_fns(model: flow_lib.MAF, hp: FlowHParams):
  """(optimizer, jitted step); cached so per-stage flows share a compile.
  `lcreg_jax.aot` compiles this step ahead of time."""
  lr = (
    optax.cosine_decay_schedule(hp.lr, hp.total_steps)
    if hp.schedule == 'cosine'
    else hp.lr
  )
  tx = optax.sgd(lr, momentum=hp.momentum or None)
  if hp.grad_clip is not None:
    tx = optax.chain(optax.clip_by_global_norm(hp.grad_clip), tx)
  loss_fn = flow_loss_fn(model, hp)

  @jax.jit
  def step(train, key, xs, ys, n, w, starts, counts, classes, num_present):
    """train = {params, batch_stats, opt_state, ema, t, centers}."""
    if hp.pair_sampling == 'class_uniform':
      pos, neg = sample_class_pairs(
        key, classes, num_present, starts, counts, hp.batch
      )
    else:
      pos, neg = sample_pairs(key, ys, n, starts, counts, hp.batch)
    valid = (ys[pos] != ys[neg]).astype(jnp.float32)
    t = train['t'] + 1.0
    grads, (batch_stats, ema, metrics) = jax.grad(loss_fn, has_aux=True)(
      train['params'],
      train['batch_stats'],
      train['centers'],
      xs[pos],
      xs[neg],
      w[pos],
      valid,
      train['ema'],
      t,
    )
    updates, opt_state = tx.update(grads, train['opt_state'], train['params'])
    params = optax.apply_updates(train['params'], updates)
    metrics['params_finite'] = all_finite(params)
    return dict(
      train,
      params=params,
      batch_stats=batch_stats,
      opt_state=opt_state,
      ema=ema,
      t=t,
    ), metrics

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
  if x.shape[0] == 0:
    return (
      np.zeros(0, np.float32),
      np.zeros(0, np.int32),
      np.zeros((0, x.shape[1]), np.float32),
    )
  fn = _flow_outputs_jit(model)
  return tuple(
    rows.map_in_chunks(lambda xb: fn(variables, xb, centers), [x], chunk)
  )


def make_flow(cfg, dim: int) -> flow_lib.MAF:
  """The flow filter of `config.dlsa` on D = `dim` features."""
  return flow_lib.MAF(
    dim,
    cfg.hidden_dim,
    cfg.num_blocks,
    cfg.bn_momentum,
    cfg.bn_eps,
    cfg.bn_unbiased_var,
    cfg.made_out_scale,
  )


def flow_check_every(cfg, n: int) -> int:
  """Steps between flow-selection checks: `flow_eval_every`, or once per
  epoch, ceil(N / batch) steps (the authors' epoch is N pairs; our last
  batch of an epoch is full, so an epoch holds up to batch - 1 more)."""
  if cfg.flow_eval_every is not None:
    return cfg.flow_eval_every
  return -(-n // cfg.flow_batch_size)


def _pair_inputs(x, y, num_classes: int, cfg, pad_to: Optional[int]):
  """The device arrays pair sampling reads: features and labels sorted by
  class (padded to pad_to rows), the positives' NLL weights, the class
  starts and counts, and the present classes (padded to C, so per-stage
  flows with fewer classes left share a compile) and their number."""
  order = np.argsort(y, kind='stable')
  ys_np = y[order].astype(np.int32)
  counts_np = np.bincount(ys_np, minlength=num_classes).astype(np.int32)
  pad = lambda a: rows.pad_rows(a, pad_to)
  w = class_nll_weights(
    ys_np, num_classes, cfg.nll_weight_power, cfg.nll_weight_norm
  )[ys_np]
  present = np.flatnonzero(counts_np > 0).astype(np.int32)
  return (
    pad(x[order].astype(np.float32)),
    pad(ys_np),
    pad(w),
    jnp.asarray(np.cumsum(counts_np) - counts_np),
    jnp.asarray(counts_np),
    jnp.asarray(np.pad(present, (0, num_classes - present.size))),
    jnp.asarray(present.size, jnp.int32),
  )


def _flow_scorer(model, centers, cfg, x, y, x_val, y_val, num_classes):
  """(score(variables), its log label), or (None, label) when the metric
  needs a validation split and there is none. The authors' metric is
  counted on the flow's own training samples; it is None over the cap."""
  metric, k, chunk = cfg.flow_select_metric, cfg.num_clusters, cfg.eval_chunk
  label = 'train_authors' if metric == 'authors' else f'val_{metric}'
  if metric != 'authors' and y_val.size == 0:
    return None, label

  def score(variables):
    if metric == 'authors':
      _, ct, _ = flow_evaluate(model, variables, centers, x, chunk)
      return authors_selection_score(
        ct,
        y,
        k,
        num_classes,
        cfg.select_min_purity,
        cfg.select_min_size,
        cfg.select_cap,
        cfg.select_cap_factor,
      )
    _, cv, _ = flow_evaluate(model, variables, centers, x_val, chunk)
    if metric == 'purity':
      return cluster_purity(cv, y_val, k, num_classes)
    _, ct, _ = flow_evaluate(model, variables, centers, x, chunk)
    return heldout_purity(ct, y, cv, y_val, k, num_classes)

  return score, label


def _flow_selection(score, label: str):
  """evaluate(step, state) for the loop: offers the current flow.

  A flow over the cap (score None) is no candidate; while no flow has been
  accepted (the best score is still Selection's start, -inf) the latest
  one is kept, the authors' fallback to their last epoch's model.
  """

  def evaluate(step_num, state):
    current = {
      'params': state.train['params'],
      'batch_stats': state.train['batch_stats'],
    }
    if score is None:
      return state.keep_last(step_num, current), {}
    s = score(current)
    if s is None:
      kept = (
        state.keep_last(step_num, current)
        if np.isneginf(state.best_score)
        else state
      )
      return kept, {f'{label}_over_cap': 1.0}
    return state.offer(step_num, current, s), {label: s}

  return evaluate


def train_flow(
  x,
  y,
  x_val,
  y_val,
  *,
  num_classes: int,
  config,
  seed: int,
  workdir: str,
  fingerprint: dict | None = None,
  pad_to: Optional[int] = None,
  checkpoint_every: int = 500,
  hooks=(),
  log: Callable[[str], None] = print,
  name: str = 'flow',
):
  """Trains the flow filter through the shared loop; selects a checkpoint.

  Pairs are drawn on the device from a key of (seed, step), so a killed run
  resumes exactly from `workdir/checkpoints`. pad_to pads the training
  arrays to a fixed row count so per-stage flows reuse one compilation.
  The untrained flow is no candidate for the authors' metric: any trained
  one replaces it.

  Returns:
    (model, variables, centers, info) with the selected variables.
  """
  cfg = config
  n, dim = x.shape
  if n == 0:
    raise ValueError(f'{name}: no training samples')
  k = cfg.num_clusters
  hp = FlowHParams.from_config(cfg, dim)
  model = make_flow(cfg, dim)
  kc, ki = jax.random.split(jax.random.PRNGKey(seed))
  centers = flow_lib.make_centers(kc, k, dim, cfg.center_std)
  inputs = _pair_inputs(x, y, num_classes, cfg, pad_to)
  variables = _flow_init_fn(model)(ki, inputs[0][:2])
  tx, step = flow_train_fns(model, hp)
  score, label = _flow_scorer(
    model, centers, cfg, x, y, x_val, y_val, num_classes
  )
  initial = (
    score(variables)
    if score and cfg.flow_select_metric != 'authors'
    else -np.inf
  )
  log(f'{name}: n={n} D={dim} K={k} step 0 {label}={initial:.4f}')
  train = _start_state(tx, variables, centers)
  check_every = flow_check_every(cfg, n)
  state = loop.fit(
    loop.Selection.start(train, variables, initial),
    name=name,
    step_fn=lambda s, key: s.advance(
      step, key, inputs[0], inputs[1], n, *inputs[2:]
    ),
    batches=loop.step_keys(seed + 1),
    total_steps=hp.total_steps,
    checkpoints=checkpoints_lib.StageCheckpoints(
      files.as_path(workdir) / 'checkpoints',
      dict(fingerprint or {}, component=name, n_train=n, n_val=int(y_val.size)),
    ),
    workdir=workdir,
    log_every=min(cfg.eval_every, check_every),
    checkpoint_every=checkpoint_every,
    evaluate_every=check_every,
    evaluate_fn=_flow_selection(score, label),
    hooks=hooks,
    batch_size=cfg.flow_batch_size,
    unit='pairs',
    advice='Lower --config.dlsa.flow_lr, or set --config.dlsa.flow_grad_clip.',
  )
  return (
    model,
    state.best,
    centers,
    _selection_info(state, score is not None, label, name, n, log),
  )


def _start_state(tx, variables, centers) -> dict:
  """The flow's training state at step 0."""
  return dict(
    params=variables['params'],
    batch_stats=variables['batch_stats'],
    opt_state=tx.init(variables['params']),
    ema=jnp.zeros((centers.shape[0],), jnp.float32),
    t=jnp.zeros((), jnp.float32),
    centers=centers,
  )


def _selection_info(
  state, scored: bool, label: str, name: str, n: int, log
) -> dict:
  """Logs and returns which flow the selection kept."""
  best_score, best_step = float(state.best_score), int(state.best_step)
  # Without a scorer the last flow is kept and no flow was over any cap.
  over_cap = bool(scored and np.isneginf(best_score))
  log(
    f'{name}: selected step {best_step} '
    + (
      '(every flow over the cap: the last one)'
      if over_cap
      else f'({label}={best_score:.4f})'
    )
  )
  return {
    'val_score': None if over_cap else best_score,
    'over_cap': over_cap,
    'step': best_step,
    'n_train': n,
  }
