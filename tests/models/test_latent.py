import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from lcreg_jax.models import latent


def test_latent_module_matches_numpy_transcription_of_design():
  rng = np.random.default_rng(0)
  b, p, d, m = 2, 5, 6, 3
  fmap = rng.normal(size=(b, p, d)).astype(np.float32)
  module = latent.LatentCategories(num_latents=m, tau_assign=0.7)
  params = module.init(jax.random.key(0), jnp.asarray(fmap))['params']
  out = module.apply({'params': params}, jnp.asarray(fmap))

  pool = np.asarray(params['pool'], np.float64)
  enc, cls = params['encoder'], params['latent_classifier']
  z = pool @ np.asarray(enc['kernel']) + np.asarray(enc['bias'])
  s = scipy.special.expit(fmap @ z.T / np.sqrt(d))  # eq. 1
  a = scipy.special.softmax(s / 0.7, axis=-1)  # eq. 2
  recon = a @ z  # eq. 3
  u = np.einsum('bpm,bpd->bmd', a, fmap) / (a.sum(1)[..., None] + 1e-6)
  g = u @ np.asarray(cls['kernel']) + np.asarray(cls['bias'])
  for key, ref in (
    ('assignment', a),
    ('reconstruction', recon),
    ('latent_samples', u),
    ('latent_logits', g),
  ):
    np.testing.assert_allclose(out[key], ref, rtol=1e-4, atol=1e-5, err_msg=key)


def test_latent_noise_moves_only_the_reconstruction():
  fmap = jnp.asarray(
    np.random.default_rng(1).normal(size=(2, 4, 3)), jnp.float32
  )
  module = latent.LatentCategories(num_latents=2)
  params = module.init(jax.random.key(0), fmap)
  noise = jnp.ones((2, 2, 3))
  clean = module.apply(params, fmap)
  noisy = module.apply(params, fmap, latent_noise=noise)
  # Assignments sum to one, so adding 1 to every latent adds 1 everywhere.
  np.testing.assert_allclose(
    noisy['reconstruction'], clean['reconstruction'] + 1, rtol=1e-5
  )
  np.testing.assert_allclose(noisy['latent_samples'], clean['latent_samples'])
