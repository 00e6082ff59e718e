"""DLSA's classifiers on frozen features (docs/method.md §6): the cluster-aided
classifier of each routing stage and the final ordinary one, trained with
balanced softmax through the shared loop and selected on validation."""

import dataclasses
import functools
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lcreg_jax import checkpoints as checkpoints_lib
from lcreg_jax import files
from lcreg_jax import loop
from lcreg_jax import losses
from lcreg_jax.dlsa import rows
from lcreg_jax.train_state import all_finite

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


def prior_correction(stage_counts: np.ndarray, full_counts: np.ndarray,
                     tiny: float) -> np.ndarray:
  """log(n_c,stage / n_c): the stage's label prior relative to the full one.

  A balanced-softmax stage trained on a routed subset predicts as if the
  classes were balanced; adding this at inference re-weights it towards
  the subset's own class mix (tiny keeps absent classes finite).
  """
  stage = np.asarray(stage_counts, np.float64)
  full = np.maximum(np.asarray(full_counts, np.float64), 1.0)
  return np.log(stage / full + tiny).astype(np.float32)


def inference_offset(class_counts: np.ndarray, mask_absent: bool,
                     tiny: float) -> np.ndarray:
  """Added to a stage's logits at inference: log(1[n_c > 0] + tiny)."""
  if not mask_absent:
    return np.zeros(class_counts.shape, np.float32)
  return np.log((class_counts > 0).astype(np.float64) + tiny).astype(
      np.float32)


@dataclasses.dataclass(frozen=True)
class ClassifierHparams:
  """Static hyper-parameters of a classifier step (hashable for jit)."""
  lr: float
  weight_decay: float
  batch: int
  tiny: float

  @classmethod
  def from_config(cls, cfg) -> 'ClassifierHparams':
    return cls(lr=cfg.classifier_lr,
               weight_decay=cfg.classifier_weight_decay,
               batch=cfg.classifier_batch_size,
               tiny=cfg.balanced_softmax_tiny)


@functools.lru_cache(maxsize=None)
def classifier_fns(model: nn.Module, hp: ClassifierHparams):
  """Optimiser, jitted step and accuracy of one classifier setup.

  Cached so stages with equal padded shapes share one compilation (XLA
  compiles dominate the run time on CPU); `lcreg_jax.aot` compiles the step
  ahead of time.
  """
  tx = optax.adamw(hp.lr, weight_decay=hp.weight_decay)

  @jax.jit
  def step(train, key, xs, ys, n, counts):
    params, opt_state = train
    idx = jax.random.randint(key, (hp.batch,), 0, n)  # Rows >= n: padding.
    loss_fn = lambda p: losses.balanced_softmax_loss(
        model.apply(p, *(a[idx] for a in xs)), ys[idx], counts, hp.tiny)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, opt_state), dict(loss=loss,
                                     params_finite=all_finite(params))

  @jax.jit
  def num_correct(params, offset, xs, ys, n):
    pred = jnp.argmax(model.apply(params, *xs) + offset, -1)
    return jnp.sum((pred == ys) & (jnp.arange(ys.shape[0]) < n))

  return tx, step, num_correct


@functools.lru_cache(maxsize=None)
def _init_fn(model: nn.Module):
  # One compile instead of one eager RNG compile per parameter shape.
  return jax.jit(model.init)


@functools.lru_cache(maxsize=None)
def _probs_fn(model: nn.Module):
  return jax.jit(lambda params, offset, xs: jax.nn.softmax(
      model.apply(params, *xs) + offset, -1))


def train_classifier(model: nn.Module,
                     train_inputs: Sequence[np.ndarray],
                     train_labels: np.ndarray,
                     val_inputs: Sequence[np.ndarray],
                     val_labels: np.ndarray,
                     *,
                     num_classes: int,
                     config,
                     seed: int,
                     workdir: str,
                     fingerprint: dict | None = None,
                     balanced: bool = True,
                     prior_counts: Optional[np.ndarray] = None,
                     pad_train: Optional[int] = None,
                     pad_val: Optional[int] = None,
                     checkpoint_every: int = 500,
                     hooks=(),
                     log: Callable[[str], None] = print,
                     name: str = 'classifier'):
  """Trains `model` with (balanced) softmax; picks the best val checkpoint.

  Minibatches are drawn uniformly with replacement from the training subset
  (balanced softmax already corrects the label prior), keyed on (seed,
  step). Validation top-1 every `eval_every` steps and at the end selects
  the parameters (the first best wins); without validation samples the last
  parameters are kept. The loop checkpoints to `workdir/checkpoints`, so a
  killed run resumes. pad_train / pad_val pad the arrays to a fixed row count
  so later stages reuse the compiled step. prior_counts replaces the
  training subset's label counts in the balanced softmax (the final
  classifier uses the full training counts, as the authors do).

  Returns:
    (params, offset, info): offset is the inference logit offset for absent
    classes, info has 'val_accuracy' and 'best_step'.
  """
  cfg = config
  n, n_val = int(train_labels.shape[0]), int(val_labels.shape[0])
  if n == 0:
    raise ValueError(f'{name}: no training samples')
  counts = np.bincount(train_labels, minlength=num_classes).astype(np.float32)
  bsm_counts = (counts if prior_counts is None else
                np.asarray(prior_counts, np.float32))
  train_counts = jnp.asarray(bsm_counts if balanced else
                             np.ones_like(counts))
  hp = ClassifierHparams.from_config(cfg)
  offset = jnp.asarray(inference_offset(counts, cfg.mask_absent_classes,
                                        hp.tiny))
  tx, step, num_correct = classifier_fns(model, hp)
  xs = tuple(rows.pad_rows(np.asarray(a, np.float32), pad_train)
             for a in train_inputs)
  ys = rows.pad_rows(np.asarray(train_labels, np.int32), pad_train)
  vxs = tuple(rows.pad_rows(np.asarray(a, np.float32), pad_val)
              for a in val_inputs)
  vys = rows.pad_rows(np.asarray(val_labels, np.int32), pad_val)
  params = _init_fn(model)(jax.random.PRNGKey(seed), *(a[:1] for a in xs))
  state = loop.Selection.start((params, tx.init(params)), params)

  def evaluate(step_num, state):
    params = state.train[0]
    if not n_val:
      return state.offer(step_num, params, np.nan, always=True), {}
    acc = float(num_correct(params, offset, vxs, vys, n_val)) / n_val
    return state.offer(step_num, params, acc), {'val_accuracy': acc}

  fingerprint = dict(fingerprint or {}, component=name, n_train=n,
                     n_val=n_val, balanced=balanced,
                     prior_counts=[float(v) for v in bsm_counts])
  state = loop.fit(
      state, name=name,
      step_fn=lambda s, key: s.advance(step, key, xs, ys, n, train_counts),
      batches=loop.step_keys(seed + 1), total_steps=cfg.classifier_steps,
      checkpoints=checkpoints_lib.StageCheckpoints(
          files.as_path(workdir) / 'checkpoints', fingerprint),
      workdir=workdir, log_every=cfg.eval_every,
      checkpoint_every=checkpoint_every, evaluate_every=cfg.eval_every,
      evaluate_fn=evaluate, hooks=hooks,
      batch_size=cfg.classifier_batch_size, unit='features',
      advice='Lower --config.dlsa.classifier_lr.')
  if not n_val:
    log(f'{name}: no validation samples, keeping the last parameters')
  val_acc, best_step = float(state.best_score), int(state.best_step)
  log(f'{name}: n_train={n} n_val={n_val} val_acc={val_acc:.4f} at step '
      f'{best_step}')
  return state.best, offset, {'val_accuracy': val_acc, 'best_step': best_step,
                              'bsm_counts': bsm_counts}


def predict_probs(model: nn.Module, params, offset,
                  inputs: Sequence[np.ndarray],
                  chunk: int = 4096) -> np.ndarray:
  """Softmax of logits + offset (no label prior: balanced test prior)."""
  n = inputs[0].shape[0]
  if n == 0:
    return np.zeros((0, offset.shape[0]), np.float32)
  probs = _probs_fn(model)
  # Always `chunk` rows: one compilation serves every split and stage.
  return rows.map_in_chunks(lambda *xs: probs(params, offset, xs), inputs,
                            chunk)
