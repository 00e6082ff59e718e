"""Fixed row counts for DLSA's jitted functions: arrays padded with zero
rows and passes in equal blocks, so every split and stage shares one
compilation."""

import jax
import jax.numpy as jnp
import numpy as np


def pad_rows(a, rows=None) -> jax.Array:
  """`a` (N, ...) as a device array of max(rows, N, 1) rows, zeros after
  row N (the callers never read them: they pass N along, or cut the
  outputs back)."""
  a = np.asarray(a)
  rows = max(rows or 0, a.shape[0], 1)
  return jnp.asarray(
    np.pad(a, [(0, rows - a.shape[0])] + [(0, 0)] * (a.ndim - 1))
  )


def map_in_chunks(fn, inputs, chunk: int):
  """fn(*blocks) over `chunk`-row blocks of `inputs` (arrays with the same
  N >= 1 rows, as float32), each padded to `chunk` rows; fn's outputs (an
  array or a tuple of arrays) cut back to the real rows and concatenated
  on the host."""
  outs = []
  for i in range(0, inputs[0].shape[0], chunk):
    part = [np.asarray(a[i : i + chunk], np.float32) for a in inputs]
    n = part[0].shape[0]
    res = fn(*(pad_rows(a, chunk) for a in part))
    outs.append(jax.tree.map(lambda r, n=n: np.asarray(r)[:n], res))
  return jax.tree.map(lambda *o: np.concatenate(o, 0), *outs)
