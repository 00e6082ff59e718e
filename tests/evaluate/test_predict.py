"""predict: every example exactly once, in order, whatever the padding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lcreg_jax import parallel
from lcreg_jax import train_state
from lcreg_jax.data import pipeline
from lcreg_jax.evaluate import predict


class _Sum(nn.Module):
  """logits = per-image pixel sum times (1, 2); features = the sum."""

  @nn.compact
  def __call__(self, x, train=False):
    s = x.reshape(x.shape[0], -1).sum(-1, keepdims=True)
    s = s + 0 * self.param('w', nn.initializers.zeros, ())
    hits = jnp.ones((x.shape[0], 4, 1)) * jnp.array([1.0, 0.0])  # (B, P, M)
    return dict(logits=s * jnp.array([1.0, 2.0]), features=s, assignment=hits)


def test_each_example_once_in_order():
  mesh = parallel.make_mesh(4)
  model = _Sum()
  params = model.init(jax.random.key(0), jnp.zeros((1, 2, 2, 1)))['params']
  state = train_state.TrainState.create(
    apply_fn=model.apply,
    params=params,
    batch_stats={},
    tx=optax.sgd(0.1),
    cov={},
  )
  images = np.arange(13 * 4, dtype=np.uint8).reshape(13, 2, 2, 1)
  labels = np.arange(13) % 3
  batches = pipeline.make_eval_iterator(
    images,
    labels,
    global_batch_size=8,
    sharding=parallel.batch_sharding(mesh),
    mean=0.0,
    std=1.0,
  )
  out = predict.predict(state, batches, mesh=mesh)
  sums = images.reshape(13, -1).sum(-1) / 255.0
  np.testing.assert_allclose(out['features'][:, 0], sums, rtol=1e-6)
  np.testing.assert_array_equal(out['labels'], labels)
  assert out['logits'].shape == (13, 2)
  # 13 real images × 4 positions, all won by latent 0; padding not counted.
  np.testing.assert_array_equal(out['latent_usage'], [52, 0])
