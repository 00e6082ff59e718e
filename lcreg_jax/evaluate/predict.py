"""Model outputs over one pass of a split: logits, pooled features, labels,
and how often each latent category wins a position."""

import functools

import jax
import numpy as np

from lcreg_jax import parallel


@functools.lru_cache(maxsize=None)
def eval_step(apply_fn, mesh):
  """One jitted evaluation step per (model, mesh), shared by every split
  (and compiled ahead of time by `lcreg_jax.aot`)."""

  def eval_step(params, batch_stats, batch):
    out = apply_fn(
      {'params': params, 'batch_stats': batch_stats},
      batch['image'],
      train=False,
    )
    res = dict(logits=out['logits'], features=out['features'])
    if 'assignment' in out:
      m = out['assignment'].shape[-1]
      hits = jax.nn.one_hot(out['assignment'].argmax(-1), m)  # (B, P, M)
      res['latent_usage'] = (hits.sum(1) * batch['mask'][:, None]).sum(0)
    return res

  rep = parallel.replicated(mesh)
  return jax.jit(
    eval_step, in_shardings=(rep, rep, parallel.batch_sharding(mesh))
  )


def predict(state, batches, *, mesh) -> dict:
  """Runs the model over `batches` (an eval iterator with a padding mask).

  Returns NumPy arrays over the real examples, each counted once and in
  order: 'logits' (N, C), 'features' (N, D), 'labels' (N,), and with a latent
  module 'latent_usage' (M,), positions won by each latent category.
  """
  step = eval_step(state.apply_fn, mesh)
  outs = []
  for batch in batches:
    res = step(state.params, state.batch_stats, batch)
    res['mask'] = batch['mask']
    res['labels'] = batch['label']
    outs.append(parallel.to_host(res))
  mask = np.concatenate([o['mask'] for o in outs]) > 0
  result = {
    k: np.concatenate([o[k] for o in outs])[mask]
    for k in ('logits', 'features', 'labels')
  }
  if 'latent_usage' in outs[0]:
    result['latent_usage'] = np.sum([o['latent_usage'] for o in outs], 0)
  return result
