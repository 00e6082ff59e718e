"""τ-normalisation of the classifier's columns (docs/method.md §8)."""

import numpy as np
import pytest

from lcreg_jax.models import heads


@pytest.mark.parametrize('tau', [0.0, 0.5, 1.0, 1.7])
def test_tau_normalize_matches_numpy(tau):
  kernel = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
  kernel[:, 2] *= 5  # columns of very different norms
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


def test_normed_head_is_scaled_cosine_without_bias():
  import jax

  rng = np.random.default_rng(1)
  x = rng.normal(size=(5, 6)).astype(np.float32)
  x[1] *= 100.0  # the feature's norm must not matter
  head = heads.Head(4, kind='normed', normed_scale=30.0)
  variables = head.init(jax.random.key(0), x)
  assert set(variables['params']) == {'fc'}
  assert set(variables['params']['fc']) == {'kernel'}  # no bias
  w = np.asarray(variables['params']['fc']['kernel'], np.float64)
  x64 = x.astype(np.float64)
  want = 30.0 * np.array(
    [
      [
        x64[i] @ w[:, c] / np.linalg.norm(x64[i]) / np.linalg.norm(w[:, c])
        for c in range(4)
      ]
      for i in range(5)
    ]
  )
  got = np.asarray(head.apply(variables, x))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert np.abs(got).max() <= 30.0 + 1e-4
  # Column norms do not matter either: a rescaled kernel, same logits.
  scaled = {
    'params': {
      'fc': {
        'kernel': variables['params']['fc']['kernel']
        * np.array([1.0, 7.0, 0.1, 3.0], np.float32)
      }
    }
  }
  np.testing.assert_allclose(head.apply(scaled, x), got, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kind', ['linear', 'normed'])
def test_lws_head_loads_the_plain_head_and_starts_equal(kind):
  import jax

  x = np.random.default_rng(2).normal(size=(3, 6)).astype(np.float32)
  plain = heads.Head(4, kind=kind)
  variables = plain.init(jax.random.key(0), x)
  lws = heads.Head(4, kind=kind, lws=True)
  lws_vars = lws.init(jax.random.key(1), x)
  assert set(lws_vars['params']) == {'fc', 'scale'}
  loaded = {'params': dict(lws_vars['params'], fc=variables['params']['fc'])}
  np.testing.assert_allclose(
    lws.apply(loaded, x), plain.apply(variables, x), rtol=1e-6
  )
  doubled = {
    'params': dict(loaded['params'], scale=np.array([1, 2, 1, 1], np.float32))
  }
  out = np.asarray(lws.apply(doubled, x))
  np.testing.assert_allclose(
    out[:, 1], 2 * np.asarray(plain.apply(variables, x))[:, 1], rtol=1e-6
  )
