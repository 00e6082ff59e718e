"""Class-wise ISDA (docs/method.md §8): per-sample σ² rows against a NumPy
transcription that forms the (C, D, C) product, and at C = 1000, D = 2048
(diagonal) a program with no array of C·D·C elements."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcreg_jax import losses


def _np_sigma2(w, cov, labels, lam):
  """σ²[i, j] from the explicit (C, D, C) differences, float64."""
  w = w.astype(np.float64)
  c = w.shape[1]
  full = cov if cov.ndim == 3 else np.stack([np.diag(s) for s in cov])
  diff = w[None, :, :] - w.T[:, :, None]  # (C, D, C): [m, d, j]
  table = np.einsum('mdj,mde,mej->mj', diff, full.astype(np.float64), diff)
  assert table.shape == (c, c)
  return lam * table[labels]


def _case(c=6, d=5, b=9, seed=0, diagonal=True):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(d, c))
  if diagonal:
    cov = rng.uniform(0.1, 2.0, size=(c, d))
  else:
    a = rng.normal(size=(c, d, d))
    cov = np.einsum('cde,cfe->cdf', a, a) / d
  labels = rng.integers(0, c, b)
  return w, cov, labels


@pytest.mark.parametrize('diagonal', [True, False])
def test_sigma2_matches_explicit_cdc_product(diagonal):
  w, cov, labels = _case(diagonal=diagonal)
  got = losses.classwise_isda_sigma2(
    jnp.asarray(w, jnp.float32),
    jnp.asarray(cov, jnp.float32),
    jnp.asarray(labels),
    0.3,
  )
  want = _np_sigma2(w, cov, labels, 0.3)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  # Own class exactly 0; every entry >= 0.
  assert np.all(np.asarray(got)[np.arange(len(labels)), labels] == 0)
  assert np.all(np.asarray(got) >= 0)


def test_augmented_logits_add_half_sigma2_and_match_the_latent_table():
  w, cov, labels = _case(seed=1, diagonal=False)
  logits = np.random.default_rng(2).normal(size=(len(labels), w.shape[1]))
  got = losses.classwise_isda_logits(
    jnp.asarray(logits, jnp.float32),
    jnp.asarray(w, jnp.float32),
    jnp.asarray(cov, jnp.float32),
    jnp.asarray(labels),
    0.5,
  )
  np.testing.assert_allclose(
    np.asarray(got),
    logits + 0.25 * _np_sigma2(w, cov, labels, 1.0),
    rtol=1e-5,
    atol=1e-5,
  )
  # Same bound as the (C, C)-table version the latent module uses.
  table = losses.isda_augmented_logits(
    jnp.asarray(logits, jnp.float32),
    jnp.asarray(w, jnp.float32),
    jnp.asarray(cov, jnp.float32),
    jnp.asarray(labels),
    0.5,
  )
  np.testing.assert_allclose(
    np.asarray(got), np.asarray(table), rtol=1e-5, atol=1e-5
  )


def test_gradient_flows_to_the_weights_not_the_covariance():
  w, cov, labels = _case(seed=3)
  lab = jnp.asarray(labels)

  def f(wj, cj):
    return losses.classwise_isda_sigma2(wj, cj, lab, 0.7).sum()

  gw, gc = jax.grad(f, argnums=(0, 1))(
    jnp.asarray(w, jnp.float32), jnp.asarray(cov, jnp.float32)
  )
  assert np.all(np.asarray(gc) == 0)
  # d/dW of Σ_i Σ_j λ Σ_d s_{y_i d}(W_dj - W_dy_i)², by hand in NumPy.
  s = cov[labels]  # (B, D)
  diff = w[None] - w.T[labels][:, :, None]  # (B, D, C)
  g = 2 * 0.7 * s[:, :, None] * diff  # d/dW_dj
  want = g.sum(0)
  for i, y in enumerate(labels):
    want[:, y] -= g[i].sum(-1)
  np.testing.assert_allclose(np.asarray(gw), want, rtol=1e-4, atol=1e-4)


def test_imagenet_size_diagonal_forms_no_cdc_array_and_compiles():
  c, d, b = 1000, 2048, 64
  w = jax.ShapeDtypeStruct((d, c), jnp.float32)
  cov = jax.ShapeDtypeStruct((c, d), jnp.float32)
  labels = jax.ShapeDtypeStruct((b,), jnp.int32)
  logits = jax.ShapeDtypeStruct((b, c), jnp.float32)

  def loss(z, wj, cj, y):
    aug = losses.classwise_isda_logits(z, wj, cj, y, 0.5)
    return losses.cross_entropy(aug, y)

  fn = jax.value_and_grad(loss, argnums=1)
  # The printed jaxpr lists every array of every (nested) equation by type.
  text = str(jax.make_jaxpr(fn)(logits, w, cov, labels))
  shapes = re.findall(r'(?:f32|f64|i32|bool)\[([0-9,]*)\]', text)
  biggest = max(
    int(np.prod([int(x) for x in sh.split(',') if x])) for sh in shapes
  )
  assert 0 < biggest < c * d * c // 100, biggest  # largest is (D, C)
  assert biggest == d * c
  jax.jit(fn).lower(logits, w, cov, labels).compile()
