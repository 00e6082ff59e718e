"""Classification losses: cross-entropy, mixup, label-aware smoothing
(MiSLAS, docs/method.md §3–4) and balanced softmax (docs/method.md §6, §8)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def top1(scores, labels):
  """Top-1 accuracy: the share of rows whose highest score is at the label.

  NumPy in, NumPy float64 out; jnp in (also under jit), jnp out. Host code
  that may hold device arrays passes np.asarray(scores) to get float64.
  """
  return (scores.argmax(-1) == labels).mean()


def class_mean_top1(scores, labels, num_classes: int) -> float:
  """The mean over classes of each class's top-1 accuracy, classes absent
  from `labels` left out: the model-selection score (as classifier-balancing
  scores τ), equal to top1 on a balanced set. Host NumPy, float64."""
  labels = np.asarray(labels)
  hit = (np.asarray(scores).argmax(-1) == labels).astype(np.float64)
  correct = np.bincount(labels, weights=hit, minlength=num_classes)
  count = np.bincount(labels, minlength=num_classes)
  present = count > 0
  return float((correct[present] / count[present]).mean())


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy with integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(
    logits.astype(jnp.float32), labels
  ).mean()


def mixup_cross_entropy(logits, labels, partner_labels, lam) -> jax.Array:
  """MiSLAS stage-1 loss: λ CE(ŷ, y) + (1-λ) CE(ŷ, y[perm])."""
  return lam * cross_entropy(logits, labels) + (1.0 - lam) * cross_entropy(
    logits, partner_labels
  )


def las_epsilons(
  class_counts,
  head: float,
  tail: float,
  shape: str = 'concave',
  power: float | None = None,
):
  """Per-class smoothing ε_y from the class counts (docs/method.md §4).

  ε_1 (`head`) goes to the most frequent class, ε_K (`tail`) to the rarest.
  With equal counts every class gets `head` (there is no tail to favour).
  """
  n = np.asarray(class_counts, np.float64)
  span = n.max() - n.min()
  r = (n - n.min()) / span if span > 0 else np.ones_like(n)
  if shape == 'concave':
    f = np.sin(np.pi * r / 2)
  elif shape == 'linear':
    f = r
  elif shape == 'convex':
    f = 1.0 - np.cos(np.pi * r / 2)
  elif shape == 'exp':
    if power is None:
      raise ValueError(
        "label-aware smoothing shape 'exp' needs a power p: "
        'set --config.stage2.las_power.'
      )
    f = r**power
  else:
    raise ValueError(
      f'Unknown label-aware smoothing shape {shape!r}; use one '
      "of 'concave', 'linear', 'convex', 'exp'."
    )
  return (tail + (head - tail) * f).astype(np.float32)


def label_aware_smoothing(
  logits, labels, class_counts, head, tail, shape: str = 'concave', power=None
) -> jax.Array:
  """MiSLAS label-aware smoothing, mean over the batch.

  loss = (1-ε_y)(-log p_y) + (ε_y / C) Σ_k (-log p_k).
  """
  eps = jnp.asarray(las_epsilons(class_counts, head, tail, shape, power))
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  e = eps[labels]
  nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
  uniform = -logp.mean(-1)
  return ((1.0 - e) * nll + e * uniform).mean()


def balanced_softmax_loss(
  logits, labels, class_counts, tiny: float = 1e-12, class_weights=None
):
  """Mean CE of softmax(logits + log(n_c + tiny)) (Ren et al., 2020).

  `tiny` keeps classes that are absent from the counts finite: their adjusted
  logit is ~log(tiny), so they take (almost) no softmax mass. With
  `class_weights` (stage-1 re-weighting), the class-weighted mean.
  """
  adj = logits + jnp.log(jnp.asarray(class_counts).astype(logits.dtype) + tiny)
  ce = optax.softmax_cross_entropy_with_integer_labels(adj, labels)
  if class_weights is None:
    return ce.mean()
  w = jnp.asarray(class_weights, ce.dtype)[labels]
  return (w * ce).sum() / w.sum()


def mixup_loss(loss_fn, logits, labels, partner_labels, lam) -> jax.Array:
  """Any integer-label loss under mixup, as MiSLAS and LDAM-DRW mix it:
  λ loss(ŷ, y) + (1-λ) loss(ŷ, y[perm])."""
  return lam * loss_fn(logits, labels) + (1.0 - lam) * loss_fn(
    logits, partner_labels
  )
