"""DLSA routing by flow likelihood and the per-stage classifiers."""

import functools
import math
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


def num_routed(n: int, fraction: float) -> int:
  """Training samples a stage takes out of n remaining ones.

  min(ceil(fraction · n), n - 1), clipped at 0: never all of them, so the
  final classifier always keeps training data (a stage that gets 0 is
  skipped). The 1e-9 guard keeps 0.3 · 10 = 3.0000000000000004 at 3.
  """
  k = int(math.ceil(fraction * n - 1e-9))
  return max(0, min(k, n - 1))


def route_stage(logp: np.ndarray, remaining: np.ndarray, fraction: float):
  """Picks the top-`fraction` of the remaining training samples by log p.

  Args:
    logp: (N,) log-likelihoods of all training samples.
    remaining: (N,) bool, samples not yet routed by earlier stages.
    fraction: share of the remaining samples this stage takes.
  Returns:
    (routed (N,) bool, threshold). Exactly num_routed(remaining.sum()) samples
    are routed (ties broken by index); threshold is the lowest routed log p,
    and val/test samples route with log p >= threshold.
  """
  idx = np.flatnonzero(remaining)
  k = num_routed(idx.size, fraction)
  routed = np.zeros_like(remaining, dtype=bool)
  if k == 0:
    return routed, np.inf
  order = np.argsort(-logp[idx], kind='stable')[:k]
  routed[idx[order]] = True
  return routed, float(logp[idx[order[-1]]])


def route_by_threshold(logp: np.ndarray, remaining: np.ndarray,
                       threshold: float) -> np.ndarray:
  """Val/test routing: the same log-p threshold as training."""
  return remaining & (logp >= threshold)


def cluster_prior_matrix(clusters: np.ndarray, labels: np.ndarray,
                         num_clusters: int, num_classes: int) -> np.ndarray:
  """(K, C) row-normalised class histograms of the routed training samples.

  Clusters that received no routed training sample get an all-zero row:
  the classifier then sees "no cluster evidence" (the authors' convention).
  """
  h = np.zeros((num_clusters, num_classes), np.float64)
  np.add.at(h, (clusters, labels), 1.0)
  s = h.sum(1, keepdims=True)
  return (h / np.maximum(s, 1.0)).astype(np.float32)


def balanced_softmax_loss(logits, labels, class_counts, tiny: float = 1e-12):
  """Mean CE of softmax(logits + log(n_c + tiny)) (Ren et al., 2020).

  `tiny` keeps classes that are absent from the routed subset finite: their
  adjusted logit is ~log(tiny), so they take (almost) no softmax mass.
  """
  adj = logits + jnp.log(class_counts.astype(logits.dtype) + tiny)
  return optax.softmax_cross_entropy_with_integer_labels(adj, labels).mean()


# The classifiers are linear, so their losses are convex in the parameters:
# zero initialisation loses nothing and is deterministic.
_Linear = functools.partial(nn.Dense, kernel_init=nn.initializers.zeros)


class LinearClassifier(nn.Module):
  """The final ordinary classifier."""
  num_classes: int

  @nn.compact
  def __call__(self, x):
    return _Linear(self.num_classes, name='lin_x')(x)


class ClusterAidedClassifier(nn.Module):
  """Lin_x(x) + Lin_zp([z; p_cluster])."""
  num_classes: int

  @nn.compact
  def __call__(self, x, zp):
    return (_Linear(self.num_classes, name='lin_x')(x) +
            _Linear(self.num_classes, name='lin_zp')(zp))


def inference_offset(class_counts: np.ndarray, mask_absent: bool,
                     tiny: float) -> np.ndarray:
  """Added to a stage's logits at inference: log(1[n_c > 0] + tiny)."""
  if not mask_absent:
    return np.zeros(class_counts.shape, np.float32)
  return np.log((class_counts > 0).astype(np.float64) + tiny).astype(
      np.float32)


@functools.lru_cache(maxsize=None)
def _classifier_fns(model: nn.Module, lr: float, weight_decay: float,
                    batch: int, every: int, tiny: float):
  """Jitted training chunk and accuracy of one classifier setup.

  Cached so stages with equal padded shapes share one compilation (XLA
  compiles dominate the run time on CPU).
  """
  tx = optax.adamw(lr, weight_decay=weight_decay)

  @jax.jit
  def run_chunk(params, opt_state, key, xs, ys, n, counts):
    def step(carry, k):
      params, opt_state = carry
      idx = jax.random.randint(k, (batch,), 0, n)  # Rows >= n are padding.
      loss_fn = lambda p: balanced_softmax_loss(
          model.apply(p, *(a[idx] for a in xs)), ys[idx], counts, tiny)
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss
    (params, opt_state), losses = jax.lax.scan(
        step, (params, opt_state), jax.random.split(key, every))
    return params, opt_state, losses[-1]

  @jax.jit
  def num_correct(params, offset, xs, ys, n):
    pred = jnp.argmax(model.apply(params, *xs) + offset, -1)
    return jnp.sum((pred == ys) & (jnp.arange(ys.shape[0]) < n))

  return tx, run_chunk, num_correct


@functools.lru_cache(maxsize=None)
def _init_fn(model: nn.Module):
  # One compile instead of one eager RNG compile per parameter shape.
  return jax.jit(model.init)


@functools.lru_cache(maxsize=None)
def _probs_fn(model: nn.Module):
  return jax.jit(lambda params, offset, xs: jax.nn.softmax(
      model.apply(params, *xs) + offset, -1))


def _pad_rows(a: np.ndarray, rows) -> jax.Array:
  a = np.asarray(a)
  rows = max(rows or 0, a.shape[0], 1)
  return jnp.asarray(np.pad(a, [(0, rows - a.shape[0])] + [(0, 0)] *
                            (a.ndim - 1)))


def train_classifier(model: nn.Module,
                     train_inputs: Sequence[np.ndarray],
                     train_labels: np.ndarray,
                     val_inputs: Sequence[np.ndarray],
                     val_labels: np.ndarray,
                     *,
                     num_classes: int,
                     config,
                     key: jax.Array,
                     balanced: bool = True,
                     pad_train: Optional[int] = None,
                     pad_val: Optional[int] = None,
                     log: Callable[[str], None] = print,
                     name: str = 'classifier'):
  """Trains `model` with (balanced) softmax; picks the best val checkpoint.

  Minibatches are drawn uniformly with replacement from the training subset
  (balanced softmax already corrects the label prior). Validation top-1
  every `eval_every` steps selects the parameters (first best wins);
  without validation samples the last parameters are kept. pad_train /
  pad_val pad the arrays to a fixed row count so later stages reuse the
  compiled step.

  Returns:
    (params, offset, info): offset is the inference logit offset for absent
    classes, info has 'val_accuracy', 'best_step', 'final_loss'.
  """
  cfg = config
  n, n_val = int(train_labels.shape[0]), int(val_labels.shape[0])
  if n == 0:
    raise ValueError(f'{name}: no training samples')
  counts = np.bincount(train_labels, minlength=num_classes).astype(np.float32)
  train_counts = counts if balanced else np.ones_like(counts)
  tiny = float(cfg.balanced_softmax_tiny)
  offset = jnp.asarray(
      inference_offset(counts, cfg.mask_absent_classes, tiny))
  every = max(1, int(cfg.eval_every))
  tx, run_chunk, num_correct = _classifier_fns(
      model, float(cfg.classifier_lr), float(cfg.classifier_weight_decay),
      int(cfg.classifier_batch_size), every, tiny)
  xs = tuple(_pad_rows(np.asarray(a, np.float32), pad_train)
             for a in train_inputs)
  ys = _pad_rows(np.asarray(train_labels, np.int32), pad_train)
  vxs = tuple(_pad_rows(np.asarray(a, np.float32), pad_val)
              for a in val_inputs)
  vys = _pad_rows(np.asarray(val_labels, np.int32), pad_val)
  init_key, key = jax.random.split(key)
  params = _init_fn(model)(init_key, *(a[:1] for a in xs))
  opt_state = tx.init(params)
  num_chunks = max(1, -(-int(cfg.classifier_steps) // every))
  best = (-1.0, params, 0)
  loss = jnp.nan
  for c in range(num_chunks):
    key, sub = jax.random.split(key)
    params, opt_state, loss = run_chunk(params, opt_state, sub, xs, ys, n,
                                        jnp.asarray(train_counts))
    if n_val:
      acc = float(num_correct(params, offset, vxs, vys, n_val)) / n_val
      if acc > best[0]:
        best = (acc, params, (c + 1) * every)
  if not n_val:
    log(f'{name}: no validation samples, keeping the last parameters')
    best = (float('nan'), params, num_chunks * every)
  log(f'{name}: n_train={n} n_val={n_val} val_acc={best[0]:.4f} at step '
      f'{best[2]} final_loss={float(loss):.4f}')
  return best[1], offset, {'val_accuracy': best[0], 'best_step': best[2],
                           'final_loss': float(loss)}


def predict_probs(model: nn.Module, params, offset,
                  inputs: Sequence[np.ndarray],
                  chunk: int = 4096) -> np.ndarray:
  """Softmax of logits + offset (no label prior: balanced test prior)."""
  n = inputs[0].shape[0]
  if n == 0:
    return np.zeros((0, offset.shape[0]), np.float32)
  probs = _probs_fn(model)
  out = []
  for i in range(0, n, chunk):
    part = [np.asarray(a[i:i + chunk], np.float32) for a in inputs]
    # Always `chunk` rows: one compilation serves every split and stage.
    out.append(np.asarray(probs(params, offset,
                                tuple(_pad_rows(a, chunk) for a in part)))
               [:part[0].shape[0]])
  return np.concatenate(out, 0)
