"""τ-normalisation of the classifier's columns (DESIGN §8)."""

import numpy as np
import pytest

from lcreg_jax.models import heads


@pytest.mark.parametrize('tau', [0.0, 0.5, 1.0, 1.7])
def test_tau_normalize_matches_numpy(tau):
  kernel = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
  kernel[:, 2] *= 5   # columns of very different norms
  want = np.empty((6, 4))
  for c in range(4):
    w = kernel[:, c].astype(np.float64)
    want[:, c] = w / np.sqrt((w * w).sum()) ** tau
  got = np.asarray(heads.tau_normalize(kernel, tau))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  if tau == 0.0:
    np.testing.assert_array_equal(got, kernel)
  if tau == 1.0:
    np.testing.assert_allclose(np.linalg.norm(got, axis=0), 1, rtol=1e-6)
