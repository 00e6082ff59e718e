"""DLSA flow filter: a masked autoregressive flow onto a Gaussian mixture.

x ─MADE─BN─MADE(reversed)─BN→ z,  log p(x) = log p_prior(z) + log|det ∂z/∂x|.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

HIGHEST = jax.lax.Precision.HIGHEST


def made_degrees(dim: int, hidden: int, reverse: bool):
  """Sequential MADE degrees of the inputs (1..D) and hidden units (1..D-1)."""
  deg_in = np.arange(1, dim + 1)
  if reverse:
    deg_in = deg_in[::-1]
  # max(1, ·) keeps D = 1 legal: its outputs then depend on nothing.
  deg_hidden = np.arange(hidden) % max(1, dim - 1) + 1
  return deg_in, deg_hidden


def made_masks(dim: int, hidden: int, reverse: bool):
  """Masks (D,H), (H,H), (H,2D) so output i sees inputs of lower degree."""
  deg_in, deg_h = made_degrees(dim, hidden, reverse)
  deg_out = np.concatenate([deg_in, deg_in])  # [m | a] share the order.
  masks = (
    deg_h[None, :] >= deg_in[:, None],
    deg_h[None, :] >= deg_h[:, None],
    deg_out[None, :] > deg_h[:, None],
  )
  return tuple(m.astype(np.float32) for m in masks)


def torch_uniform(fan_in: int):
  """PyTorch's default nn.Linear init of weight and bias: U(±1/√fan_in)."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
    key, shape, dtype, -bound, bound
  )


class MADE(nn.Module):
  """Masked dense D→H→H→2D with ReLU; returns the shift m and log-scale a.

  out_scale None: every layer has PyTorch's default init (the authors'
  MaskedLinear is an nn.Linear). A number: the former init, LeCun-normal
  hidden layers, zero biases, and small output weights that start the
  flow near the identity.
  """

  hidden: int
  reverse: bool = False
  out_scale: float | None = None

  def _inits(self, i: int, fan_in: int):
    if self.out_scale is None:
      return torch_uniform(fan_in), torch_uniform(fan_in)
    kernel = (
      nn.initializers.lecun_normal()
      if i < 2
      else nn.initializers.variance_scaling(
        self.out_scale**2, 'fan_in', 'normal'
      )
    )
    return kernel, nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    masks = made_masks(dim, self.hidden, self.reverse)
    h = x
    for i, (mask, size) in enumerate(
      zip(masks, (self.hidden, self.hidden, 2 * dim))
    ):
      kernel_init, bias_init = self._inits(i, h.shape[-1])
      kernel = self.param(f'kernel_{i}', kernel_init, (h.shape[-1], size))
      bias = self.param(f'bias_{i}', bias_init, (size,))
      h = h @ (kernel * jnp.asarray(mask, kernel.dtype)) + bias
      if i < 2:
        h = nn.relu(h)
    return h[..., :dim], h[..., dim:]


class MADEAffine(nn.Module):
  """u = (x - m(x)) exp(-a(x)); log|det| = -Σ a."""

  hidden: int
  reverse: bool = False
  out_scale: float | None = None

  def setup(self):
    self.made = MADE(self.hidden, self.reverse, self.out_scale)

  def __call__(self, x):
    m, a = self.made(x)
    return (x - m) * jnp.exp(-a), -a.sum(-1)

  def inverse(self, u):
    # Each pass fixes one more coordinate in autoregressive order, so D
    # passes from any start are exact. Python loop: flax submodule calls
    # cannot go inside lax loops; only tests and diagnostics invert.
    x = jnp.zeros_like(u)
    for _ in range(u.shape[-1]):
      m, a = self.made(x)
      x = u * jnp.exp(a) + m
    return x


class FlowBatchNorm(nn.Module):
  """MAF batch norm: y = (x - μ)/√(σ²+ε) e^γ + β with its log-determinant.

  Training uses the batch statistics (held constant in the log-det, as in
  MAF) and updates the running ones; evaluation uses the running ones.
  unbiased: the batch variance divides by B - 1 (the authors' x.var(0),
  PyTorch's default) in the normalisation, the log-det and the running
  average alike; False divides by B.
  """

  dim: int
  momentum: float = 0.9
  eps: float = 1e-5
  unbiased: bool = True

  def setup(self):
    self.log_gamma = self.param('log_gamma', nn.initializers.zeros, (self.dim,))
    self.beta = self.param('beta', nn.initializers.zeros, (self.dim,))
    self.mean = self.variable('batch_stats', 'mean', jnp.zeros, (self.dim,))
    self.var = self.variable('batch_stats', 'var', jnp.ones, (self.dim,))

  def __call__(self, x, train: bool = False):
    if train:
      mean, var = x.mean(0), x.var(0, ddof=int(self.unbiased))
      if not self.is_initializing():
        mo = self.momentum
        self.mean.value = mo * self.mean.value + (1 - mo) * (
          jax.lax.stop_gradient(mean)
        )
        self.var.value = mo * self.var.value + (1 - mo) * (
          jax.lax.stop_gradient(var)
        )
    else:
      mean, var = self.mean.value, self.var.value
    y = (x - mean) * jax.lax.rsqrt(var + self.eps) * jnp.exp(
      self.log_gamma
    ) + self.beta
    logdet = jnp.sum(self.log_gamma - 0.5 * jnp.log(var + self.eps))
    return y, jnp.broadcast_to(logdet, x.shape[:-1])

  def inverse(self, y):
    return (y - self.beta) * jnp.exp(-self.log_gamma) * jnp.sqrt(
      self.var.value + self.eps
    ) + self.mean.value


class MAF(nn.Module):
  """num_blocks × (MADE affine → flow BN); every other MADE order reversed."""

  dim: int
  hidden: int | None = None  # None: dim.
  num_blocks: int = 2
  bn_momentum: float = 0.9
  bn_eps: float = 1e-5
  bn_unbiased: bool = True
  made_out_scale: float | None = None

  def setup(self):
    h = self.hidden or self.dim
    self.mades = [
      MADEAffine(h, bool(i % 2), self.made_out_scale)
      for i in range(self.num_blocks)
    ]
    self.bns = [
      FlowBatchNorm(self.dim, self.bn_momentum, self.bn_eps, self.bn_unbiased)
      for _ in range(self.num_blocks)
    ]

  def __call__(self, x, train: bool = False):
    logdet = jnp.zeros(x.shape[:-1], x.dtype)
    for made, bn in zip(self.mades, self.bns):
      x, ld = made(x)
      logdet = logdet + ld
      x, ld = bn(x, train)
      logdet = logdet + ld
    return x, logdet

  def inverse(self, z):
    for made, bn in zip(self.mades[::-1], self.bns[::-1]):
      z = made.inverse(bn.inverse(z))
    return z


def make_centers(key, num_clusters: int, dim: int, std: float) -> jax.Array:
  """Fixed random prior centres μ_k ~ N(0, std² I)."""
  return std * jax.random.normal(key, (num_clusters, dim), jnp.float32)


def component_log_likelihoods(z, centers):
  """ℓ_k(z) = log N(z; μ_k, I) via ||z||² - 2 z·μ_k + ||μ_k||².

  The expanded form never builds a (batch, K, D) tensor; HIGHEST precision
  because the cross term cancels most of ||z||² + ||μ||² and TF32/bf16
  matmuls would change cluster assignments.
  """
  sq = (
    jnp.sum(z * z, -1, keepdims=True)
    - 2.0 * jnp.dot(z, centers.T, precision=HIGHEST)
    + jnp.sum(centers * centers, -1)
  )
  sq = jnp.maximum(sq, 0.0)  # Round-off can make tiny distances negative.
  return -0.5 * sq - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def component_log_likelihoods_direct(z, centers):
  """Reference form (materialises batch × K × D); tests only."""
  d = z[:, None, :] - centers[None, :, :]
  return -0.5 * jnp.sum(d * d, -1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def mixture_log_prob(z, centers):
  """log p(z) = logsumexp_k ℓ_k - log K (uniform weights); also returns ℓ."""
  ell = component_log_likelihoods(z, centers)
  return jax.nn.logsumexp(ell, -1) - math.log(centers.shape[0]), ell


def flow_outputs(model: MAF, variables, x, centers):
  """Evaluation-mode log p(x), cluster argmax_k ℓ_k(f(x)) and latent f(x)."""
  z, logdet = model.apply(variables, x, train=False)
  logp_z, ell = mixture_log_prob(z, centers)
  return logp_z + logdet, jnp.argmax(ell, -1), z
