"""The latent-category module of LCReg (docs/method.md §3)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lcreg_jax.models import inits


class LatentCategories(nn.Module):
  """Re-expresses a feature map in M learnable latent categories.

  Parameters: the latent pool P (M, D), the encoder E (dense D→D) giving
  Z = E(P), and the latent classifier G (dense D→M). `dense_init`
  (inits.DENSE) starts E and G; P is always N(0, 1).
  """

  num_latents: int
  similarity_scale: float = 0.0  # 0 → 1/sqrt(D)
  tau_assign: float = 1.0
  dense_init: str = 'flax'

  @nn.compact
  def __call__(self, fmap, latent_noise=None):
    """fmap (B, P, D) → dict of reconstruction, assignment, latent samples.

    `latent_noise` (B, M, D), when given, perturbs Z per image for the
    reconstruction only (the explicit-augmentation variant).
    """
    d = fmap.shape[-1]
    pool = self.param(
      'pool', nn.initializers.normal(1.0), (self.num_latents, d)
    )
    dense = inits.dense_init(self.dense_init, d)  # E and G both read D
    z = nn.Dense(d, name='encoder', **dense)(pool)  # (M, D)
    scale = self.similarity_scale or 1.0 / jnp.sqrt(d)
    sim = jax.nn.sigmoid(scale * jnp.einsum('bpd,md->bpm', fmap, z))
    assign = jax.nn.softmax(sim / self.tau_assign, axis=-1)  # (B, P, M)
    if latent_noise is None:
      recon = jnp.einsum('bpm,md->bpd', assign, z)
    else:
      recon = jnp.einsum('bpm,bmd->bpd', assign, z[None] + latent_noise)
    # Every image gives one sample per latent category, so the latent data
    # set is exactly balanced over the M latent classes.
    mass = assign.sum(1)  # (B, M)
    samples = jnp.einsum('bpm,bpd->bmd', assign, fmap) / (
      mass[..., None] + 1e-6
    )
    classifier = nn.Dense(self.num_latents, name='latent_classifier', **dense)
    return dict(
      reconstruction=recon,
      assignment=assign,
      latent_samples=samples,
      latent_logits=classifier(samples),
    )
