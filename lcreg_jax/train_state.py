"""The train state of both stages: parameters, BatchNorm statistics, the
optimiser state and, for LCReg, the latent categories' running moments."""

import functools
from typing import Any

from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np

from lcreg_jax import covariance


class TrainState(train_state.TrainState):
  batch_stats: Any
  cov: Any  # covariance.CovarianceState of the latents, or {} without them


def init_variables(model, rng, image_shape):
  """The model's initial variables for inputs of `image_shape`.

  Jitted: run eagerly, every initialiser compiles its own small program.
  """
  dummy = jnp.zeros((1, *image_shape), jnp.float32)
  return jax.jit(functools.partial(model.init, train=False))(
    {'params': rng}, dummy
  )


def create_train_state(model, rng, image_shape, tx, model_config=None):
  """A fresh state; with a latent module, zero moments of its M latents;
  with class-wise ISDA (`model_config.class_isda`), of the C classes."""
  variables = init_variables(model, rng, image_shape)
  cov = {}
  class_isda = model_config.class_isda if model_config is not None else 'none'
  shapes = None
  if model.latent is not None or class_isda != 'none':
    d, c = variables['params']['head']['fc']['kernel'].shape
  if model.latent is not None:
    shapes = jax.eval_shape(
      functools.partial(
        covariance.init_covariance,
        model.latent.num_latents,
        d,
        diagonal=model_config.latent.covariance == 'diagonal',
      )
    )
  elif class_isda != 'none':  # class-wise ISDA: moments of the C classes
    shapes = jax.eval_shape(
      functools.partial(
        covariance.init_covariance, c, d, diagonal=class_isda == 'diagonal'
      )
    )
  if shapes is not None:
    # Zeros on the host, whose pages the OS maps only when written: placing
    # the state (`parallel.place`) then gives each device its own rows, and
    # a split M × D × D covariance is never whole on one device.
    cov = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)
  return TrainState.create(
    apply_fn=model.apply,
    params=variables['params'],
    batch_stats=variables.get('batch_stats', {}),
    tx=tx,
    cov=cov,
  )


def all_finite(tree) -> jax.Array:
  """True iff every leaf of `tree` is finite (the loop's NaN guard)."""
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves]))
