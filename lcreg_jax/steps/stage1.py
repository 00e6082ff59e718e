"""The stage-1 step: LCReg on a MiSLAS mixup backbone (DESIGN §3, eq. 7)."""

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import optax

from lcreg_jax import covariance
from lcreg_jax import losses
from lcreg_jax.train_state import all_finite


@dataclasses.dataclass(frozen=True)
class Stage1Hparams:
  """Static hyper-parameters of the stage-1 step (hashable for jit)."""
  alpha: float
  beta: float
  gamma: float
  mixup_alpha: float
  isda_lambda0: float
  total_steps: int
  recon_normalize: bool
  recon_temperature: float
  explicit_latent_aug: bool
  seed: int = 0
  # 1: mixup partners from a permutation of the whole global batch. n: from
  # a permutation within each of n blocks of consecutive rows, the rows of
  # each device (stage1.mixup_partners=per_device), so no device needs
  # another's images.
  mixup_groups: int = 1

  @classmethod
  def from_config(cls, config, total_steps: int) -> 'Stage1Hparams':
    """From the resolved config; without latents, α = β = 0 (plain MiSLAS)."""
    s1, latent = config.stage1, config.model.latent
    return cls(alpha=s1.alpha if latent.enabled else 0.0,
               beta=s1.beta if latent.enabled else 0.0,
               gamma=s1.gamma, mixup_alpha=s1.mixup_alpha,
               isda_lambda0=s1.isda_lambda0, total_steps=total_steps,
               recon_normalize=latent.recon_normalize,
               recon_temperature=latent.recon_temperature,
               explicit_latent_aug=latent.explicit_latent_aug,
               seed=config.seed,
               mixup_groups=(config.num_devices
                             if s1.mixup_partners == 'per_device' else 1))


def mixup_partners(rng, batch: int, groups: int = 1) -> jax.Array:
  """(groups, batch // groups) partner rows, local to each group: row j of
  group g is mixed with row g * (batch // groups) + partners[g, j]. One group
  is a permutation of the whole batch."""
  rows = batch // groups
  if groups == 1:
    return jax.random.permutation(rng, batch)[None]
  return jax.vmap(lambda k: jax.random.permutation(k, rows))(
      jax.random.split(rng, groups))


def take_partners(x: jax.Array, partners: jax.Array) -> jax.Array:
  """x[partner of each row], as a gather inside each group of rows: with the
  groups on the devices that hold them, XLA needs no collective."""
  groups, rows = partners.shape
  grouped = x.reshape((groups, rows) + x.shape[1:])
  index = partners.reshape(partners.shape + (1,) * (x.ndim - 1))
  return jnp.take_along_axis(grouped, index, axis=1).reshape(x.shape)


def _scale_noise(cov, lam, n):
  if cov.ndim == 2:
    return n * jnp.sqrt(lam * cov)[None]
  chol = jnp.linalg.cholesky(lam * cov + 1e-5 * jnp.eye(cov.shape[-1]))
  return jnp.einsum('mde,bme->bmd', chol, n)


def sample_latent_noise(rng, cov_state, lam, batch: int, mesh=None):
  """ε ~ N(0, λ Σ_m) per image and latent, for the explicit variant.

  With `mesh` (the moments split along M, `parallel.state_sharding`), each
  device factors its own latents' covariances; the draws are the same.
  """
  m, d = cov_state.mean.shape
  n = jax.random.normal(rng, (batch, m, d))
  if mesh is None:
    return _scale_noise(cov_state.cov, lam, n)
  return jax.shard_map(_scale_noise, mesh=mesh,
                       in_specs=(P('data'), P(), P(None, 'data')),
                       out_specs=P(None, 'data'))(cov_state.cov, lam, n)


def train_step(state, batch, *, hp: Stage1Hparams, cov_mesh=None):
  """One stage-1 step: L = α L_aug + β L_recon + γ L_cls (eq. 7).

  The randomness (mixup λ and partner, explicit latent noise) is keyed on
  (seed, step), so a resumed run repeats it exactly. `cov_mesh`: the mesh
  when the latent moments are split along M over it (`parallel.jit_step`
  with `shard_covariance`); their update, the σ² table and the explicit
  noise then work on each device's latents, with the same results.
  """
  rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(hp.seed), 1),
                           state.step)
  mix_rng, perm_rng, noise_rng = jax.random.split(rng, 3)
  images, labels = batch['image'], batch['label']
  bsz = images.shape[0]
  if hp.mixup_alpha > 0:
    lam_mix = jax.random.beta(mix_rng, hp.mixup_alpha, hp.mixup_alpha)
  else:
    lam_mix = jnp.float32(1.0)
  partners = mixup_partners(perm_rng, bsz, hp.mixup_groups)
  mixed = lam_mix * images + (1 - lam_mix) * take_partners(images, partners)
  isda_lam = hp.isda_lambda0 * state.step / hp.total_steps
  has_latent = isinstance(state.cov, covariance.CovarianceState)

  def loss_fn(params):
    noise = None
    if has_latent and hp.explicit_latent_aug:
      noise = sample_latent_noise(noise_rng, state.cov, isda_lam, bsz,
                                  cov_mesh)
    out, mutated = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, mixed,
        train=True, latent_noise=noise, mutable=['batch_stats'])
    partner_labels = take_partners(labels, partners)
    cls = losses.mixup_cross_entropy(out['logits'], labels, partner_labels,
                                     lam_mix)
    aux = dict(cls_loss=cls, batch_stats=mutated['batch_stats'],
               cov=state.cov)
    loss = hp.gamma * cls
    if has_latent:
      samples = out['latent_samples']                    # (B, M, D)
      aux['cov'] = covariance.update_covariance_grouped(state.cov, samples,
                                                        cov_mesh)
      # Python-level branches: with α = β = 0 the traced step is exactly
      # the plain MiSLAS step (no zero-weighted terms in the graph).
      if hp.beta:
        rec = losses.reconstruction_loss(out['feature_map'],
                                         out['reconstruction'],
                                         hp.recon_normalize,
                                         hp.recon_temperature)
        aux['recon_loss'] = rec
        loss += hp.beta * rec
      if hp.alpha:
        m = samples.shape[1]
        g = out['latent_logits'].reshape(bsz * m, m)
        latent_labels = jnp.tile(jnp.arange(m), bsz)
        if not hp.explicit_latent_aug:
          kernel = params['latent']['latent_classifier']['kernel']
          g = losses.isda_augmented_logits(g, kernel, aux['cov'].cov,
                                           latent_labels, isda_lam,
                                           mesh=cov_mesh)
        aug = losses.cross_entropy(g, latent_labels)
        aux['aug_loss'] = aug
        loss += hp.alpha * aug
    acc = (out['logits'].argmax(-1) == labels).mean()
    acc_p = (out['logits'].argmax(-1) == partner_labels).mean()
    aux['accuracy'] = lam_mix * acc + (1 - lam_mix) * acc_p
    return loss, aux

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=aux.pop('batch_stats'),
                                cov=aux.pop('cov'))
  metrics = dict(loss=loss, grad_norm=optax.tree.norm(grads),
                 params_finite=all_finite(state.params), **aux)
  return state, metrics
