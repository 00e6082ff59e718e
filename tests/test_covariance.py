import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcreg_jax import covariance


@pytest.mark.parametrize('diagonal', [False, True])
def test_stream_matches_np_cov_of_concatenation(diagonal):
  rng = np.random.default_rng(0)
  c, d = 3, 4
  chunks = []
  state = covariance.init_covariance(c, d, diagonal)
  update = jax.jit(covariance.update_covariance)
  for size in (7, 1, 20, 13):
    x = rng.normal(size=(size, d)) * rng.uniform(0.5, 3, size=d) + 2.0
    y = rng.integers(0, c, size)
    y[0] = 2  # class 2 present from the first batch on
    if size == 7:
      y[y == 1] = 0  # class 1 absent in a whole batch: w = 0 path
    chunks.append((x, y))
    state = update(state, jnp.asarray(x, jnp.float32), jnp.asarray(y))
  xs = np.concatenate([x for x, _ in chunks])
  ys = np.concatenate([y for _, y in chunks])
  for k in range(c):
    sel = xs[ys == k]
    ref = np.cov(sel, rowvar=False, bias=True)
    got = np.asarray(state.cov[k])
    np.testing.assert_allclose(
      got, np.diag(ref) if diagonal else ref, rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(state.mean[k], sel.mean(0), rtol=1e-5, atol=1e-5)
    assert state.count[k] == len(sel)


def test_grouped_update_equals_general_update():
  rng = np.random.default_rng(1)
  b, c, d = 5, 3, 4
  s1 = covariance.init_covariance(c, d)
  s2 = covariance.init_covariance(c, d)
  for _ in range(3):
    x = rng.normal(size=(b, c, d)).astype(np.float32)
    s1 = covariance.update_covariance_grouped(s1, jnp.asarray(x))
    s2 = covariance.update_covariance(
      s2, jnp.asarray(x.reshape(b * c, d)), jnp.tile(jnp.arange(c), b)
    )
  for a, e in zip(s1, s2):
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


def test_empty_state_and_empty_batch_stay_zero():
  state = covariance.init_covariance(2, 3)
  x = jnp.ones((4, 3))
  state = covariance.update_covariance(state, x, jnp.zeros(4, jnp.int32))
  assert float(state.count[1]) == 0
  assert not np.any(np.asarray(state.cov[1])) and np.all(np.isfinite(state.cov))
