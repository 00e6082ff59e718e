"""Classifier heads: the linear classifier, the normalised (cosine)
classifier of LDAM-DRW, and MiSLAS's learnable weight scaling on either."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lcreg_jax.models import inits

HEADS = ('linear', 'normed')


def l2_normalize(x, axis: int, eps: float = 1e-12):
  """x / max(‖x‖, eps) along `axis` (torch's F.normalize)."""
  norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
  return x / jnp.maximum(norm, eps)


def _uniform_pm1(key, shape, dtype=jnp.float32):
  # LDAM-DRW's NormedLinear starts from U(-1, 1) columns; the scale of the
  # draw does not matter, as the columns are normalised in every call.
  return jax.random.uniform(key, shape, dtype, -1.0, 1.0)


class CosineDense(nn.Module):
  """s · cos(x, w_c): the cosine between the feature and each column of a
  bias-free (D, C) kernel, times a fixed scale s (LDAM-DRW's NormedLinear,
  whose s = 30 lives in the loss; here it lives in the head, so evaluation,
  calibration and NLL see the logits training saw)."""

  features: int
  scale: float = 30.0

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', _uniform_pm1, (x.shape[-1], self.features))
    return self.scale * (l2_normalize(x, -1) @ l2_normalize(kernel, 0))


class Head(nn.Module):
  """The classifier `fc` (linear: Dense with bias; normed: CosineDense),
  times a learnable per-class scale (init 1) when `lws` (stage 2's MiSLAS
  and LWS). The tree is `fc` plus `scale`, so a stage-1 head loads into its
  LWS form unchanged. `linear_init` (inits.DENSE) starts the linear `fc`;
  the normed one always starts from U(-1, 1) columns."""

  num_classes: int
  kind: str = 'linear'
  normed_scale: float = 30.0
  lws: bool = False
  linear_init: str = 'flax'

  @nn.compact
  def __call__(self, x):
    if self.kind == 'normed':
      logits = CosineDense(self.num_classes, self.normed_scale, name='fc')(x)
    else:
      logits = nn.Dense(
        self.num_classes,
        name='fc',
        **inits.dense_init(self.linear_init, x.shape[-1]),
      )(x)
    if self.lws:
      logits = logits * self.param(
        'scale', nn.initializers.ones, (self.num_classes,)
      )
    return logits


def tau_normalize(kernel, tau: float):
  """τ-normalisation (Kang et al., docs/method.md §8): column c of the (D, C) kernel
  divided by ‖w_c‖^τ; τ = 0 leaves it, τ = 1 gives unit columns."""
  norms = jnp.linalg.norm(kernel, axis=0, keepdims=True)
  return kernel / norms**tau
