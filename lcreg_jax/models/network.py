"""Backbone + optional latent module + head, the model of both stages."""

import flax.linen as nn
import jax.numpy as jnp

from lcreg_jax.models import heads
from lcreg_jax.models import inits
from lcreg_jax.models import latent as latent_lib
from lcreg_jax.models import resnet

CLASSIFY_ON = ('sum', 'feature', 'reconstruction')


class LongTailNet(nn.Module):
  backbone: nn.Module
  num_classes: int
  latent: latent_lib.LatentCategories | None = None
  classify_on: str = 'sum'
  lws: bool = False
  head: str = 'linear'  # heads.HEADS
  normed_scale: float = 30.0
  linear_init: str = 'flax'  # inits.DENSE, of the linear head

  @nn.compact
  def __call__(self, x, train: bool = True, latent_noise=None):
    fmap = self.backbone(x, train=train)
    b, h, w, d = fmap.shape
    flat = fmap.reshape(b, h * w, d)
    out = dict(feature_map=flat)
    cls_in = flat
    if self.latent is not None:
      out.update(self.latent(flat, latent_noise=latent_noise))
      recon = out['reconstruction']
      cls_in = {'sum': flat + recon, 'feature': flat, 'reconstruction': recon}[
        self.classify_on
      ]
    pooled = cls_in.mean(1)
    out['features'] = pooled
    out['logits'] = heads.Head(
      self.num_classes,
      kind=self.head,
      normed_scale=self.normed_scale,
      lws=self.lws,
      linear_init=self.linear_init,
      name='head',
    )(pooled)
    return out


def make_model(model_config, num_classes: int, lws: bool = False):
  if model_config.classify_on not in CLASSIFY_ON:
    raise ValueError(
      f'Unknown model.classify_on {model_config.classify_on!r};'
      f' use one of {CLASSIFY_ON}.'
    )
  dtype = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[model_config.dtype]
  init = model_config.init
  backbone = resnet.make_backbone(
    model_config.backbone,
    model_config.shortcut,
    dtype=dtype,
    trainable_blocks=model_config.trainable_blocks,
    weight_init=init,
    zero_init_residual=model_config.zero_init_residual,
  )
  module = None
  if model_config.latent.enabled:
    module = latent_lib.LatentCategories(
      num_latents=model_config.latent.num_latents,
      similarity_scale=model_config.latent.similarity_scale,
      tau_assign=model_config.latent.tau_assign,
      dense_init=inits.latent_scheme(init),
    )
  return LongTailNet(
    backbone=backbone,
    num_classes=num_classes,
    latent=module,
    classify_on=model_config.classify_on,
    lws=lws,
    head=model_config.head,
    normed_scale=model_config.normed_scale,
    linear_init=inits.head_scheme(init, resnet.family(model_config.backbone)),
  )
