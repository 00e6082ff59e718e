"""The stage-1 step: LCReg on a MiSLAS mixup backbone (docs/method.md §3, eq. 7)."""

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
  # L_cls and its class weights (docs/method.md §8); defaults: MiSLAS's plain CE.
  loss: str = 'ce'
  focal_gamma: float = 1.0
  ldam_max_margin: float = 0.5
  ldam_scale: float = 30.0
  # The fixed scale the model's logits already carry (model.head=normed:
  # s · cos), divided out so LDAM's margins apply to the cosines.
  ldam_logit_scale: float = 1.0
  la_tau: float = 1.0
  reweight: str = 'none'
  reweight_beta: float = 0.9999
  drw_step: int = 0  # reweight=drw: first step with the weights
  class_counts: tuple | None = None  # training counts n_c (tuple: hashable)
  class_isda: str = 'none'  # class-wise ISDA on the pooled feature

  @classmethod
  def from_config(
    cls, config, total_steps: int, steps_per_epoch: int = 1, class_counts=None
  ) -> 'Stage1Hparams':
    """From the resolved config; without latents, α = β = 0 (plain MiSLAS).

    `class_counts` (the training set's) are needed by every loss but ce and
    by re-weighting; `steps_per_epoch` places the DRW switch.
    """
    s1, latent = config.stage1, config.model.latent
    needs_counts = s1.loss not in ('ce',) or s1.reweight != 'none'
    if needs_counts and class_counts is None:
      raise ValueError(
        f'stage1.loss={s1.loss} / stage1.reweight='
        f'{s1.reweight} need the training class counts.'
      )
    return cls(
      loss=s1.loss,
      focal_gamma=s1.focal_gamma,
      ldam_max_margin=s1.ldam_max_margin,
      ldam_scale=s1.ldam_scale,
      ldam_logit_scale=(
        config.model.normed_scale if config.model.head == 'normed' else 1.0
      ),
      la_tau=s1.la_tau,
      reweight=s1.reweight,
      reweight_beta=s1.reweight_beta,
      drw_step=int(round(s1.drw_epoch * steps_per_epoch)),
      class_counts=(
        tuple(int(n) for n in class_counts)
        if class_counts is not None
        else None
      ),
      class_isda=(config.model.class_isda if not latent.enabled else 'none'),
      alpha=s1.alpha if latent.enabled else 0.0,
      beta=s1.beta if latent.enabled else 0.0,
      gamma=s1.gamma,
      mixup_alpha=s1.mixup_alpha,
      isda_lambda0=s1.isda_lambda0,
      total_steps=total_steps,
      recon_normalize=latent.recon_normalize,
      recon_temperature=latent.recon_temperature,
      explicit_latent_aug=latent.explicit_latent_aug,
      seed=config.seed,
      mixup_groups=(
        config.num_devices if s1.mixup_partners == 'per_device' else 1
      ),
    )


def mixup_partners(rng, batch: int, groups: int = 1) -> jax.Array:
  """(groups, batch // groups) partner rows, local to each group: row j of
  group g is mixed with row g * (batch // groups) + partners[g, j]. One group
  is a permutation of the whole batch."""
  rows = batch // groups
  if groups == 1:
    return jax.random.permutation(rng, batch)[None]
  return jax.vmap(lambda k: jax.random.permutation(k, rows))(
    jax.random.split(rng, groups)
  )


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
  return jax.shard_map(
    _scale_noise,
    mesh=mesh,
    in_specs=(P('data'), P(), P(None, 'data')),
    out_specs=P(None, 'data'),
  )(cov_state.cov, lam, n)


def class_weights(hp: Stage1Hparams, step):
  """The class weights of L_cls at `step`, or None (plain mean)."""
  if hp.reweight == 'none':
    return None
  w = losses.effective_number_weights(hp.class_counts, hp.reweight_beta)
  if hp.reweight == 'effective_number':
    return jnp.asarray(w)
  return losses.drw_weights(step, hp.drw_step, w)


def class_loss(hp: Stage1Hparams, logits, labels, weights) -> jax.Array:
  """L_cls for integer labels: the configured loss, class-weighted."""
  if hp.loss == 'ce':
    if weights is None:
      return losses.cross_entropy(logits, labels)
    ce = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels
    )
    return losses.class_weighted_mean(ce, labels, weights)
  if hp.loss == 'focal':
    return losses.focal_loss(logits, labels, hp.focal_gamma, weights)
  if hp.loss == 'ldam':
    return losses.ldam_loss(
      logits / hp.ldam_logit_scale,
      labels,
      hp.class_counts,
      hp.ldam_max_margin,
      hp.ldam_scale,
      weights,
    )
  if hp.loss == 'balanced_softmax':
    return losses.balanced_softmax_loss(
      logits, labels, hp.class_counts, class_weights=weights
    )
  if hp.loss == 'logit_adjusted':
    return losses.logit_adjusted_loss(
      logits, labels, hp.class_counts, hp.la_tau, weights
    )
  raise ValueError(f'Unknown stage1.loss {hp.loss!r}.')


def _classification_loss(
  hp,
  params,
  state,
  out,
  labels,
  partner_labels,
  lam_mix,
  weights,
  isda_lam,
  aux,
):
  """γ's term, L_cls on the mixed batch: mixup CE (MiSLAS), or the
  configured loss, through class-wise ISDA when it is on (which also
  merges this batch's features into the class moments in `aux['cov']`)."""
  class_isda = hp.class_isda != 'none'
  if class_isda:
    # ISDA's order: merge this batch's features, then use the moments.
    # (No mixup here: config validation requires mixup_alpha=0.)
    aux['cov'] = covariance.update_covariance(
      state.cov, out['features'], labels
    )
    kernel = params['head']['fc']['kernel']

    def loss_of(z, y):
      z = losses.classwise_isda_logits(z, kernel, aux['cov'].cov, y, isda_lam)
      return class_loss(hp, z, y, weights)
  else:

    def loss_of(z, y):
      return class_loss(hp, z, y, weights)

  if hp.loss == 'ce' and weights is None and not class_isda:
    return losses.mixup_cross_entropy(
      out['logits'], labels, partner_labels, lam_mix
    )  # MiSLAS, as it always was
  return losses.mixup_loss(
    loss_of, out['logits'], labels, partner_labels, lam_mix
  )


def _add_latent_losses(loss, hp, params, state, out, isda_lam, cov_mesh, aux):
  """loss + β L_recon + α L_aug (LCReg's terms, added in that order);
  updates the latent moments in `aux['cov']` and logs each term in
  `aux`."""
  samples = out['latent_samples']  # (B, M, D)
  bsz, m = samples.shape[:2]
  # Named scopes label LCReg's parts in the compiled program (profiles,
  # `lcreg_jax.aot --dump_hlo`); they change no computation.
  with jax.named_scope('lcreg_covariance_update'):
    aux['cov'] = covariance.update_covariance_grouped(
      state.cov, samples, cov_mesh
    )
  # Python-level branches: with α = β = 0 the traced step is exactly
  # the plain MiSLAS step (no zero-weighted terms in the graph).
  if hp.beta:
    with jax.named_scope('lcreg_reconstruction_loss'):
      rec = losses.reconstruction_loss(
        out['feature_map'],
        out['reconstruction'],
        hp.recon_normalize,
        hp.recon_temperature,
      )
    aux['recon_loss'] = rec
    loss += hp.beta * rec
  if hp.alpha:
    g = out['latent_logits'].reshape(bsz * m, m)
    latent_labels = jnp.tile(jnp.arange(m), bsz)
    if not hp.explicit_latent_aug:
      kernel = params['latent']['latent_classifier']['kernel']
      with jax.named_scope('lcreg_sigma2_table'):
        g = losses.isda_augmented_logits(
          g, kernel, aux['cov'].cov, latent_labels, isda_lam, mesh=cov_mesh
        )
    with jax.named_scope('lcreg_aug_loss'):
      aug = losses.cross_entropy(g, latent_labels)
    aux['aug_loss'] = aug
    loss += hp.alpha * aug
  return loss


def train_step(state, batch, *, hp: Stage1Hparams, cov_mesh=None):
  """One stage-1 step: L = α L_aug + β L_recon + γ L_cls (eq. 7).

  The randomness (mixup λ and partner, explicit latent noise) is keyed on
  (seed, step), so a resumed run repeats it exactly. `cov_mesh`: the mesh
  when the latent moments are split along M over it (`parallel.jit_step`
  with `shard_covariance`); their update, the σ² table and the explicit
  noise then work on each device's latents, with the same results.
  """
  rng = jax.random.fold_in(
    jax.random.fold_in(jax.random.key(hp.seed), 1), state.step
  )
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
  class_isda = hp.class_isda != 'none'
  has_latent = (
    isinstance(state.cov, covariance.CovarianceState) and not class_isda
  )
  weights = class_weights(hp, state.step)

  def loss_fn(params):
    noise = None
    if has_latent and hp.explicit_latent_aug:
      noise = sample_latent_noise(noise_rng, state.cov, isda_lam, bsz, cov_mesh)
    out, mutated = state.apply_fn(
      {'params': params, 'batch_stats': state.batch_stats},
      mixed,
      train=True,
      latent_noise=noise,
      mutable=['batch_stats'],
    )
    partner_labels = take_partners(labels, partners)
    aux = dict(batch_stats=mutated['batch_stats'], cov=state.cov)
    cls = _classification_loss(
      hp,
      params,
      state,
      out,
      labels,
      partner_labels,
      lam_mix,
      weights,
      isda_lam,
      aux,
    )
    aux['cls_loss'] = cls
    loss = hp.gamma * cls
    if has_latent:
      loss = _add_latent_losses(
        loss, hp, params, state, out, isda_lam, cov_mesh, aux
      )
    acc = losses.top1(out['logits'], labels)
    acc_p = losses.top1(out['logits'], partner_labels)
    aux['accuracy'] = lam_mix * acc + (1 - lam_mix) * acc_p
    return loss, aux

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(
    grads=grads, batch_stats=aux.pop('batch_stats'), cov=aux.pop('cov')
  )
  metrics = dict(
    loss=loss,
    grad_norm=optax.tree.norm(grads),
    params_finite=all_finite(state.params),
    **aux,
  )
  return state, metrics
