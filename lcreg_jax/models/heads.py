"""Classifier heads: the linear classifier and MiSLAS's learnable weight scaling."""

import flax.linen as nn
import jax.numpy as jnp


class LinearHead(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes, name='fc')(x)


class LWSHead(nn.Module):
  """Linear head times a learnable per-class scale (init 1), stage 2 only.

  The parameter tree is the linear head's plus `scale`, so a stage-1 head
  loads into it unchanged.
  """
  num_classes: int

  @nn.compact
  def __call__(self, x):
    scale = self.param('scale', nn.initializers.ones, (self.num_classes,))
    return nn.Dense(self.num_classes, name='fc')(x) * scale


def tau_normalize(kernel, tau: float):
  """τ-normalisation (Kang et al., DESIGN §8): column c of the (D, C) kernel
  divided by ‖w_c‖^τ; τ = 0 leaves it, τ = 1 gives unit columns."""
  norms = jnp.linalg.norm(kernel, axis=0, keepdims=True)
  return kernel / norms ** tau
