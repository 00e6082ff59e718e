"""Where LCReg's extra cost goes: its parts compiled alone for a TPU target.

  python benchmarks/lcreg_cost_parts.py --config=configs/imagenet_lt.py \
      --target=tpu:v5e:4x4

The stage-1 step of `lcreg_jax.aot` gives LCReg's total over the plain
MiSLAS step; this compiles each part of the difference by itself, with the
run's per-device shapes and layouts, forward and backward: the latent module
(similarities, assignment, reconstruction F̂, latent samples, latent
classifier), the covariance update, the σ² table with the augmented latent
loss, and the reconstruction loss. It prints FLOPs and bytes accessed per
image (XLA's cost analysis of the compiled per-device program) for each.
Seconds per part; no data, no parameters.
"""

import json

# First: lcreg_jax.aot sets the compile-only environment before JAX loads.
from lcreg_jax import cli
from lcreg_jax import aot  # pylint: disable=g-bad-import-order

from absl import flags
import jax
import jax.numpy as jnp

from lcreg_jax import config as config_lib
from lcreg_jax import covariance
from lcreg_jax import losses
from lcreg_jax import parallel
from lcreg_jax.models import latent as latent_lib
from lcreg_jax.models import resnet

FLAGS = flags.FLAGS


def parts(config, mesh):
  """(name, jitted fn, abstract args) of each LCReg part, global batch."""
  b = config.stage1.batch_size
  latent = config.model.latent
  m, d = latent.num_latents, resnet.feature_dim(config.model.backbone)
  side = config.data.image_size // 32  # ResNet's final map: /32
  p = side * side
  dtype = jnp.dtype(config.model.dtype)
  rep, rows = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  cov_sharding = (
    parallel.covariance_sharding(mesh) if config.shard_covariance else rep
  )
  cov_mesh = mesh if config.shard_covariance else None
  spec = lambda shape, s, dt=jnp.float32: jax.ShapeDtypeStruct(
    shape, dt, sharding=s
  )
  diagonal = latent.covariance == 'diagonal'
  cov_shape = (m, d) if diagonal else (m, d, d)
  state = covariance.CovarianceState(
    mean=spec((m, d), cov_sharding),
    cov=spec(cov_shape, cov_sharding),
    count=spec((m,), cov_sharding),
  )
  module = latent_lib.LatentCategories(
    num_latents=m, similarity_scale=1.0 / d**0.5, tau_assign=latent.tau_assign
  )
  variables = jax.eval_shape(
    module.init, jax.random.key(0), jnp.zeros((1, p, d), dtype)
  )
  variables = aot.with_sharding(
    variables, jax.tree.map(lambda _: rep, variables)
  )

  def latent_fwd_bwd(variables, fmap):
    def f(v, x):
      out = module.apply(v, x)
      return sum(jnp.sum(o.astype(jnp.float32)) for o in jax.tree.leaves(out))

    return jax.grad(f, argnums=(0, 1))(variables, fmap)

  def cov_update(state, samples):
    return covariance.update_covariance_grouped(state, samples, cov_mesh)

  def sigma2_aug(kernel, state, logits):
    def f(k, g):
      labels = jnp.tile(jnp.arange(m), b)
      g = losses.isda_augmented_logits(
        g, k, state.cov, labels, 0.5, mesh=cov_mesh
      )
      return losses.cross_entropy(g, labels)

    return jax.grad(f, argnums=(0, 1))(kernel, logits)

  def recon(fmap, rec):
    return jax.grad(
      lambda f, r: losses.reconstruction_loss(f, r), argnums=(0, 1)
    )(fmap, rec)

  return [
    (
      'latent_module',
      latent_fwd_bwd,
      (variables, spec((b, p, d), rows, dtype)),
    ),
    ('covariance_update', cov_update, (state, spec((b, m, d), rows))),
    (
      'sigma2_table_and_aug_loss',
      sigma2_aug,
      (spec((d, m), rep), state, spec((b * m, m), rows)),
    ),
    (
      'reconstruction_loss',
      recon,
      (spec((b, p, d), rows, dtype), spec((b, p, d), rows, dtype)),
    ),
  ]


def main(argv):
  del argv
  target = aot.get_target(FLAGS.target)
  config = config_lib.resolve_and_validate(FLAGS.config, len(target.devices))
  mesh = parallel.make_mesh(config.num_devices, target.devices)
  b = config.stage1.batch_size
  for name, fn, args in parts(config, mesh):
    row = aot.compile_program(
      aot.Program(name, jax.jit(fn), args, b, mesh.size), target
    )
    print(
      json.dumps(
        {
          k: row[k]
          for k in (
            'program',
            'target',
            'flops_per_image',
            'bytes_per_image',
            'hbm_bytes',
            'compile_s',
          )
        }
      ),
      flush=True,
    )


if __name__ == '__main__':
  # --config and --target are lcreg_jax.main's and lcreg_jax.aot's flags.
  cli.run(main)
