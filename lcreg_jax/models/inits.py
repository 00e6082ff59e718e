"""Parameter initialisers: as the authors' PyTorch code, or flax's defaults
(`model.init`, docs/method.md §2).

'authors': MiSLAS's CIFAR ResNets (resnet8, resnet32) draw every conv and
the classifier's kernel from an untruncated He normal over the fan-in; its
ImageNet ResNets (resnet10/50/152, torchvision's) draw the convs over the
fan-out and leave the classifier at PyTorch's default Linear init. Biases
of a PyTorch Linear start U(±1/√fan_in). 'flax': flax's defaults (a
truncated He normal for convs, LeCun normal kernels and zero biases), the
initialisation of every run before the key existed.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

INITS = ('authors', 'flax')
# How a Dense layer starts: flax's default, an untruncated He normal kernel
# (MiSLAS's CIFAR `_weights_init`), or PyTorch's default nn.Linear.
DENSE = ('flax', 'kaiming', 'torch')


def kaiming_normal(mode: str):
  """torch's `kaiming_normal_(mode=mode, nonlinearity='relu')`: N(0, 2/fan),
  untruncated (flax's `kaiming_normal` is a truncated normal)."""
  return nn.initializers.variance_scaling(2.0, mode, 'normal')


def uniform(bound: float):
  """U(-bound, bound)."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def conv_init(init: str, stem: str):
  """The backbone's conv kernel initialiser for `model.init` and the
  backbone family (its stem: 'cifar' or 'imagenet')."""
  if init == 'flax':
    return nn.initializers.kaiming_normal()
  return kaiming_normal('fan_in' if stem == 'cifar' else 'fan_out')


def dense_init(scheme: str, fan_in: int) -> dict:
  """kernel_init and bias_init of an nn.Dense with `fan_in` inputs; {} keeps
  flax's defaults. PyTorch's default Linear is kaiming_uniform with a = √5,
  whose bound √(6 / ((1 + a²) fan_in)) is 1/√fan_in, the bias's bound too."""
  if scheme == 'flax':
    return {}
  bound = 1.0 / math.sqrt(fan_in)
  kernel = kaiming_normal('fan_in') if scheme == 'kaiming' else uniform(bound)
  return dict(kernel_init=kernel, bias_init=uniform(bound))


def head_scheme(init: str, stem: str) -> str:
  """The linear classifier's Dense scheme (DENSE) for `model.init`."""
  if init == 'flax':
    return 'flax'
  return 'kaiming' if stem == 'cifar' else 'torch'


def latent_scheme(init: str) -> str:
  """E and G of the latent module. The LCReg authors published no code;
  'authors' takes what a PyTorch implementation gets by default."""
  return 'flax' if init == 'flax' else 'torch'
