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
from lcreg_jax.dlsa import flow as flow_lib
from lcreg_jax.dlsa import rows
from lcreg_jax.train_state import all_finite


def _linear(features: int, init: str, fan_in: int, name: str) -> nn.Dense:
  """A dense layer initialised as PyTorch's nn.Linear (init 'torch', the
  authors': weight and bias U(±1/√fan_in)) or at zero ('zeros': the losses
  are convex in a linear layer's parameters, so zeros lose nothing and are
  deterministic)."""
  if init == 'zeros':
    return nn.Dense(features, kernel_init=nn.initializers.zeros, name=name)
  u = flow_lib.torch_uniform(fan_in)
  return nn.Dense(features, kernel_init=u, bias_init=u, name=name)


class LinearClassifier(nn.Module):
  """The final classifier as one linear layer (the former form)."""

  num_classes: int
  weight_init: str = 'torch'

  @nn.compact
  def __call__(self, x):
    lin = functools.partial(_linear, self.num_classes, self.weight_init)
    return lin(x.shape[-1], 'lin_x')(x)


class LinLinClassifier(nn.Module):
  """The authors' final classifier Lin_x(x) + Lin_z(x): their cluster-aided
  model with inputs 'XZ' and z = x, two independently initialised layers
  (under SGD, one layer with twice the learning rate and a summed init)."""

  num_classes: int
  weight_init: str = 'torch'

  @nn.compact
  def __call__(self, x):
    lin = functools.partial(_linear, self.num_classes, self.weight_init)
    return lin(x.shape[-1], 'lin_x')(x) + lin(x.shape[-1], 'lin_z')(x)


class ClusterAidedClassifier(nn.Module):
  """Lin_x(x) + Lin_zp([z; p_cluster])."""

  num_classes: int
  weight_init: str = 'torch'

  @nn.compact
  def __call__(self, x, zp):
    lin = functools.partial(_linear, self.num_classes, self.weight_init)
    return lin(x.shape[-1], 'lin_x')(x) + lin(zp.shape[-1], 'lin_zp')(zp)


def final_model(cfg, num_classes: int) -> nn.Module:
  """The final classifier of `config.dlsa` (`final_classifier`)."""
  cls = (
    LinLinClassifier if cfg.final_classifier == 'lin_lin' else LinearClassifier
  )
  return cls(num_classes, cfg.classifier_init)


def select_score(scores, labels, num_classes: int, metric: str) -> float:
  """The validation score every DLSA choice uses (`eval.select_metric`):
  the mean of per-class top-1 ('class_mean') or top-1 over images."""
  if metric == 'class_mean':
    return losses.class_mean_top1(scores, labels, num_classes)
  return float(losses.top1(np.asarray(scores), np.asarray(labels)))


def prior_correction(
  stage_counts: np.ndarray, full_counts: np.ndarray, tiny: float
) -> np.ndarray:
  """log(n_c,stage / n_c): the stage's label prior relative to the full one.

  A balanced-softmax stage trained on a routed subset predicts as if the
  classes were balanced; adding this at inference re-weights it towards
  the subset's own class mix (tiny keeps absent classes finite).
  """
  stage = np.asarray(stage_counts, np.float64)
  full = np.maximum(np.asarray(full_counts, np.float64), 1.0)
  return np.log(stage / full + tiny).astype(np.float32)


def inference_offset(
  class_counts: np.ndarray, mask_absent: bool, tiny: float
) -> np.ndarray:
  """Added to a stage's logits at inference: log(1[n_c > 0] + tiny)."""
  if not mask_absent:
    return np.zeros(class_counts.shape, np.float32)
  return np.log((class_counts > 0).astype(np.float64) + tiny).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class ClassifierHparams:
  """Static hyper-parameters of a classifier step (hashable for jit)."""

  lr: float
  optimizer: str
  weight_decay: float
  batch: int
  tiny: float
  by_epochs: bool  # shuffled epochs (authors) or batches with replacement

  @classmethod
  def from_config(cls, cfg) -> 'ClassifierHparams':
    return cls(
      lr=cfg.classifier_lr,
      optimizer=cfg.classifier_optimizer,
      weight_decay=cfg.classifier_weight_decay,
      batch=cfg.classifier_batch_size,
      tiny=cfg.balanced_softmax_tiny,
      by_epochs=cfg.classifier_steps is None,
    )


def masked_balanced_softmax(logits, labels, counts, valid, tiny: float):
  """Mean balanced-softmax CE over the rows `valid` marks: the padded tail
  of an epoch's last, partial batch carries no weight, so the step is the
  one PyTorch takes on the short batch."""
  adj = logits + jnp.log(counts.astype(logits.dtype) + tiny)
  ce = optax.softmax_cross_entropy_with_integer_labels(adj, labels)
  w = valid.astype(ce.dtype)
  return jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1.0)


@functools.lru_cache(maxsize=None)
def classifier_fns(model: nn.Module, hp: ClassifierHparams):
  """Optimiser, jitted step and validation scores of one classifier setup.

  The step's `batch` is (row indices (B,), number of real rows) with
  `by_epochs`, else a PRNG key for B rows drawn with replacement from the
  n real rows. Cached so stages with equal padded shapes share one
  compilation (XLA compiles dominate the run time on CPU);
  `lcreg_jax.aot` compiles the step ahead of time.
  """
  tx = (
    optax.sgd(hp.lr)
    if hp.optimizer == 'sgd'
    else optax.adamw(hp.lr, weight_decay=hp.weight_decay)
  )

  @jax.jit
  def step(train, batch, xs, ys, n, counts):
    params, opt_state = train
    if hp.by_epochs:
      idx, num_real = batch
      valid = jnp.arange(hp.batch) < num_real
    else:
      idx = jax.random.randint(batch, (hp.batch,), 0, n)  # Rows >= n: pad.
      valid = jnp.ones((hp.batch,), bool)
    loss_fn = lambda p: masked_balanced_softmax(
      model.apply(p, *(a[idx] for a in xs)), ys[idx], counts, valid, hp.tiny
    )
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, opt_state), dict(
      loss=loss, params_finite=all_finite(params)
    )

  @jax.jit
  def scores(params, offset, xs):
    return model.apply(params, *xs) + offset

  return tx, step, scores


def epoch_batches(seed: int, n: int, batch: int):
  """`batches` for the loop: step s reads its slice of epoch e's shuffle of
  the n rows (e = (s - 1) // steps per epoch), a permutation drawn from
  (seed, e), so a resumed run reads what an uninterrupted one would. The
  last batch of an epoch is short: padded with row 0, its real size
  alongside."""
  per_epoch = -(-n // batch)

  def batches(start: int):
    step, perm = start, None
    while True:
      epoch, j = divmod(step, per_epoch)
      if j == 0 or perm is None:
        perm = np.random.default_rng([seed, epoch]).permutation(n)
      idx = perm[j * batch : (j + 1) * batch]
      yield (
        jnp.asarray(np.pad(idx, (0, batch - idx.size)), jnp.int32),
        np.int32(idx.size),
      )
      step += 1

  return batches, per_epoch


@functools.lru_cache(maxsize=None)
def _init_fn(model: nn.Module):
  # One compile instead of one eager RNG compile per parameter shape.
  return jax.jit(model.init)


@functools.lru_cache(maxsize=None)
def _probs_fn(model: nn.Module):
  return jax.jit(
    lambda params, offset, xs: jax.nn.softmax(
      model.apply(params, *xs) + offset, -1
    )
  )


def _schedule(cfg, seed: int, n: int):
  """(batches, total steps, steps between validation checks): the authors'
  epochs, or the former steps of batches drawn with replacement."""
  if cfg.classifier_steps is not None:
    return loop.step_keys(seed), cfg.classifier_steps, cfg.eval_every
  batches, per_epoch = epoch_batches(seed, n, cfg.classifier_batch_size)
  return (
    batches,
    cfg.classifier_epochs * per_epoch,
    cfg.classifier_eval_epochs * per_epoch,
  )


def _selection(scores, offset, val_x, val_y, num_classes: int, metric: str):
  """evaluate(step, state) for the loop: offers the current parameters
  with their validation score (`select_score`); without validation
  samples the last ones are kept."""
  n_val = int(val_y.shape[0])

  def evaluate(step_num, state):
    params = state.train[0]
    if not n_val:
      return state.keep_last(step_num, params), {}
    s = select_score(
      np.asarray(scores(params, offset, val_x))[:n_val],
      val_y,
      num_classes,
      metric,
    )
    return state.offer(step_num, params, s), {f'val_{metric}': s}

  return evaluate


def _padded(train_inputs, train_labels, val_inputs, pad_train, pad_val):
  """(train inputs, train labels, val inputs) as float32/int32 arrays padded
  to fixed row counts, so that later stages reuse the compiled step."""
  pad = lambda a, n, dtype=np.float32: rows.pad_rows(np.asarray(a, dtype), n)
  return (
    tuple(pad(a, pad_train) for a in train_inputs),
    pad(train_labels, pad_train, np.int32),
    tuple(pad(a, pad_val) for a in val_inputs),
  )


def train_classifier(
  model: nn.Module,
  train_inputs: Sequence[np.ndarray],
  train_labels: np.ndarray,
  val_inputs: Sequence[np.ndarray],
  val_labels: np.ndarray,
  *,
  num_classes: int,
  config,
  seed: int,
  workdir: str,
  select_metric: str = 'class_mean',
  fingerprint: dict | None = None,
  balanced: bool = True,
  prior_counts: Optional[np.ndarray] = None,
  pad_to: tuple[int | None, int | None] = (None, None),
  checkpoint_every: int = 500,
  hooks=(),
  log: Callable[[str], None] = print,
  name: str = 'classifier',
):
  """Trains `model` with (balanced) softmax; picks the best val checkpoint.

  By default the authors' schedule: `classifier_epochs` epochs of shuffled
  batches, checked every `classifier_eval_epochs`; with `classifier_steps`
  set, that many batches drawn with replacement, checked every
  `eval_every` steps. Batches come from (seed, step), so a run killed
  mid-way resumes exactly from `workdir/checkpoints`. The validation score
  is `select_metric` (`select_score`; the first best wins); without
  validation samples the last parameters are kept. pad_to pads the (train,
  val) arrays to fixed row counts so later stages reuse the compiled step.
  prior_counts replaces the training subset's label counts in the balanced
  softmax (the final classifier uses the full training counts, as the
  authors do).

  Returns:
    (params, offset, info): offset is the inference logit offset for absent
    classes, info has 'val_score', 'best_step' and 'bsm_counts'.
  """
  n, n_val = int(train_labels.shape[0]), int(val_labels.shape[0])
  if n == 0:
    raise ValueError(f'{name}: no training samples')
  counts = np.bincount(train_labels, minlength=num_classes).astype(np.float32)
  bsm_counts = counts if prior_counts is None else prior_counts
  bsm_counts = np.asarray(bsm_counts, np.float32)
  hp = ClassifierHparams.from_config(config)
  offset = jnp.asarray(
    inference_offset(counts, config.mask_absent_classes, hp.tiny)
  )
  tx, step, scores = classifier_fns(model, hp)
  xs, ys, val_xs = _padded(train_inputs, train_labels, val_inputs, *pad_to)
  train_counts = jnp.asarray(bsm_counts if balanced else np.ones_like(counts))
  params = _init_fn(model)(jax.random.PRNGKey(seed), *(a[:1] for a in xs))
  batches, total, check_every = _schedule(config, seed + 1, n)
  keys = dict(component=name, n_train=n, n_val=n_val, balanced=balanced)
  keys.update(select_metric=select_metric, prior_counts=bsm_counts.tolist())
  state = loop.fit(
    loop.Selection.start((params, tx.init(params)), params),
    name=name,
    step_fn=lambda s, b: s.advance(step, b, xs, ys, n, train_counts),
    batches=batches,
    total_steps=total,
    checkpoints=checkpoints_lib.StageCheckpoints(
      files.as_path(workdir) / 'checkpoints', dict(fingerprint or {}, **keys)
    ),
    workdir=workdir,
    log_every=min(config.eval_every, check_every),
    checkpoint_every=checkpoint_every,
    evaluate_every=check_every,
    evaluate_fn=_selection(
      scores, offset, val_xs, np.asarray(val_labels), num_classes, select_metric
    ),
    hooks=hooks,
    batch_size=config.classifier_batch_size,
    unit='features',
    advice='Lower --config.dlsa.classifier_lr.',
  )
  info = _selected(state, n, n_val, select_metric, name, log)
  return state.best, offset, dict(info, bsm_counts=bsm_counts)


def _selected(state, n: int, n_val: int, metric: str, name: str, log):
  """Logs and returns which parameters the selection kept."""
  val_score = float(state.best_score) if n_val else None
  best_step = int(state.best_step)
  log(
    f'{name}: n_train={n} n_val={n_val} '
    + (
      f'val {metric}={val_score:.4f} at step {best_step}'
      if n_val
      else 'no validation samples, keeping the last parameters'
    )
  )
  return {'val_score': val_score, 'best_step': best_step}


def predict_probs(
  model: nn.Module,
  params,
  offset,
  inputs: Sequence[np.ndarray],
  chunk: int = 4096,
) -> np.ndarray:
  """Softmax of logits + offset (no label prior: balanced test prior)."""
  n = inputs[0].shape[0]
  if n == 0:
    return np.zeros((0, offset.shape[0]), np.float32)
  probs = _probs_fn(model)
  # Always `chunk` rows: one compilation serves every split and stage.
  return rows.map_in_chunks(
    lambda *xs: probs(params, offset, xs), inputs, chunk
  )
