"""LCReg reconstruction loss (eq. 4) against hand-worked and NumPy values."""

import jax.numpy as jnp
import numpy as np
import scipy.special

from lcreg_jax import losses


def test_reconstruction_loss_hand_case():
  f = jnp.array([[[1.0], [2.0]]])
  r = jnp.array([[[1.0], [0.0]]])
  # Cor = F̂ Fᵀ = [[1, 2], [0, 0]]: rows give log(1 + e) and log 2.
  expected = (np.log(1 + np.e) + np.log(2)) / 2
  np.testing.assert_allclose(
    losses.reconstruction_loss(f, r), expected, rtol=1e-6
  )


def test_reconstruction_loss_normalized_matches_numpy():
  rng = np.random.default_rng(0)
  f = rng.normal(size=(2, 5, 3))
  r = rng.normal(size=(2, 5, 3))
  fn = f / np.linalg.norm(f, axis=-1, keepdims=True)
  rn = r / np.linalg.norm(r, axis=-1, keepdims=True)
  cor = np.einsum('bpd,bqd->bpq', rn, fn) / 0.5
  ref = -np.mean(
    [
      scipy.special.log_softmax(cor[b], -1)[p, p]
      for b in range(2)
      for p in range(5)
    ]
  )
  got = losses.reconstruction_loss(jnp.asarray(f), jnp.asarray(r), True, 0.5)
  np.testing.assert_allclose(got, ref, rtol=1e-4)
