"""Fixed row counts: zero padding and passes in equal padded blocks."""

import jax
import jax.numpy as jnp
import numpy as np

from lcreg_jax.dlsa import rows


def test_pad_rows_appends_zero_rows_and_keeps_at_least_one():
  a = np.arange(6, dtype=np.int32).reshape(3, 2)
  padded = rows.pad_rows(a, 5)
  assert padded.shape == (5, 2) and padded.dtype == jnp.int32
  np.testing.assert_array_equal(padded[:3], a)
  np.testing.assert_array_equal(padded[3:], 0)
  assert rows.pad_rows(a).shape == (3, 2)  # never cut
  assert rows.pad_rows(np.zeros((0, 2))).shape == (1, 2)


def test_map_in_chunks_equals_one_pass_and_compiles_once():
  x = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
  shapes = []

  @jax.jit
  def fn(a, b):
    shapes.append(a.shape)  # runs once per compilation
    return a.sum(1), a * b

  s, p = rows.map_in_chunks(fn, [x, 2 * x], chunk=4)
  np.testing.assert_allclose(s, x.sum(1), rtol=1e-6)
  np.testing.assert_allclose(p, 2 * x * x, rtol=1e-6)
  assert shapes == [(4, 3)]
  single = rows.map_in_chunks(lambda a: a + 1, [x], chunk=4)
  np.testing.assert_allclose(single, x + 1)
