"""Flow filter: MADE masks, log-determinants, inverses, mixture density."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from lcreg_jax.dlsa import flow as flow_lib


def _randomize(params, seed, scale=1.0):
  """Replaces every parameter by N(0, scale²) so no mask hides behind zeros."""
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(
    tree, [scale * rng.standard_normal(l.shape) for l in leaves]
  )


def _per_sample_jacobians(fn, x):
  """∂fn(x_i)/∂x_i for each row (jitted: eager jacfwd is slow)."""
  return np.asarray(jax.jit(jax.vmap(jax.jacfwd(fn)))(jnp.asarray(x)))


def _per_sample_slogdet(fn, x):
  """log|det ∂fn(x_i)/∂x_i| for each row, from the dense Jacobian."""
  return np.linalg.slogdet(_per_sample_jacobians(fn, x))[1]


@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('dim,hidden', [(5, 5), (4, 9)])
def test_made_jacobian_is_strictly_triangular(reverse, dim, hidden):
  with jax.enable_x64(True):
    made = flow_lib.MADE(hidden, reverse)
    init = jax.eval_shape(made.init, jax.random.PRNGKey(0), jnp.zeros((1, dim)))
    allowed = (
      np.tril(np.ones((dim, dim)), -1)
      if not reverse
      else np.triu(np.ones((dim, dim)), 1)
    ).astype(bool)
    # Rows 0..D-1 of the Jacobian are ∂m/∂x, rows D..2D-1 are ∂a/∂x.
    jac = lambda params, x: _per_sample_jacobians(
      lambda v: jnp.concatenate(made.apply(params, v[None]), -1)[0], x
    )
    allowed2 = np.concatenate([allowed, allowed])
    rng = np.random.default_rng(2)
    params = _randomize(init, seed=1)
    for j in jac(params, rng.standard_normal((5, dim))):
      # Output i may only see inputs earlier in the block's order.
      assert np.all(j[~allowed2] == 0.0)
    # With positive weights and biases every ReLU is active and every path
    # adds up positively, so the Jacobian shows the full connectivity:
    # sequential degrees must connect every allowed pair, not just some.
    positive = jax.tree.map(lambda a: np.abs(a) + 0.1, params)
    np.testing.assert_array_equal(
      jac(positive, np.abs(rng.standard_normal((1, dim))))[0] != 0, allowed2
    )


def test_made_masks_of_one_dimension_disconnect_everything():
  m1, m2, m3 = flow_lib.made_masks(1, 3, False)
  assert m1.shape == (1, 3) and m2.shape == (3, 3) and m3.shape == (3, 2)
  assert not m3.any()


def test_made_affine_logdet_and_inverse():
  with jax.enable_x64(True):
    dim = 4
    for reverse in (False, True):
      layer = flow_lib.MADEAffine(dim, reverse)
      v = _randomize(
        jax.eval_shape(layer.init, jax.random.PRNGKey(0), jnp.zeros((1, dim))),
        seed=3,
        scale=0.5,
      )
      x = jnp.asarray(np.random.default_rng(4).standard_normal((6, dim)))
      u, logdet = layer.apply(v, x)
      ref = _per_sample_slogdet(lambda xi: layer.apply(v, xi[None])[0][0], x)
      np.testing.assert_allclose(logdet, ref, rtol=1e-10, atol=1e-10)
      # Direct transcription of u = (x - m) exp(-a).
      m, a = flow_lib.MADE(dim, reverse).apply(
        {'params': v['params']['made']}, x
      )
      np.testing.assert_allclose(u, (x - m) * np.exp(-a), rtol=1e-12)
      back = layer.apply(v, u, method=flow_lib.MADEAffine.inverse)
      np.testing.assert_allclose(back, x, atol=1e-9)


def _bn_variables(dim, seed):
  bn = flow_lib.FlowBatchNorm(dim, momentum=0.8, eps=1e-3)
  rng = np.random.default_rng(seed)
  v = {
    'params': {
      'log_gamma': rng.normal(0, 0.5, dim),
      'beta': rng.normal(0, 1, dim),
    },
    'batch_stats': {
      'mean': rng.normal(0, 1, dim),
      'var': rng.uniform(0.2, 3.0, dim),
    },
  }
  return bn, v


def test_flow_batchnorm_eval_logdet_and_inverse():
  with jax.enable_x64(True):
    dim = 3
    bn, v = _bn_variables(dim, seed=5)
    x = jnp.asarray(np.random.default_rng(6).standard_normal((5, dim)))
    y, logdet = bn.apply(v, x, train=False)
    ref = _per_sample_slogdet(
      lambda xi: bn.apply(v, xi[None], train=False)[0][0], x
    )
    np.testing.assert_allclose(logdet, ref, rtol=1e-10)
    s, st = v['params'], v['batch_stats']
    expected = (x - st['mean']) / np.sqrt(st['var'] + 1e-3) * np.exp(
      s['log_gamma']
    ) + s['beta']
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    back = bn.apply(v, y, method=flow_lib.FlowBatchNorm.inverse)
    np.testing.assert_allclose(back, x, atol=1e-12)


@pytest.mark.parametrize('unbiased', [True, False])
def test_flow_batchnorm_train_mode_uses_batch_stats(unbiased):
  """Authors (unbiased): the variance divides by B - 1 in the output, the
  log-det and the running average (PyTorch's x.var(0)); former: by B."""
  with jax.enable_x64(True):
    dim = 3
    _, v = _bn_variables(dim, seed=7)
    bn = flow_lib.FlowBatchNorm(dim, momentum=0.8, eps=1e-3, unbiased=unbiased)
    x = np.random.default_rng(8).normal(2.0, 1.5, (5, dim))
    (y, logdet), upd = bn.apply(
      v, jnp.asarray(x), train=True, mutable=['batch_stats']
    )
    mean = x.sum(0) / 5
    var = ((x - mean) ** 2).sum(0) / (4 if unbiased else 5)
    s = v['params']
    np.testing.assert_allclose(
      y,
      (x - mean) / np.sqrt(var + 1e-3) * np.exp(s['log_gamma']) + s['beta'],
      rtol=1e-12,
    )
    # Log-det of the per-sample map with the batch statistics held fixed.
    frozen = {'params': s, 'batch_stats': {'mean': mean, 'var': var}}
    ref = _per_sample_slogdet(
      lambda xi: bn.apply(frozen, xi[None], train=False)[0][0], x
    )
    np.testing.assert_allclose(logdet, ref, rtol=1e-10)
    old = v['batch_stats']
    np.testing.assert_allclose(
      upd['batch_stats']['mean'], 0.8 * old['mean'] + 0.2 * mean, rtol=1e-12
    )
    np.testing.assert_allclose(
      upd['batch_stats']['var'], 0.8 * old['var'] + 0.2 * var, rtol=1e-12
    )
    np.testing.assert_allclose(
      logdet, np.sum(s['log_gamma'] - 0.5 * np.log(var + 1e-3)), rtol=1e-12
    )


def test_made_init_is_pytorch_default_or_the_former_small_output():
  dim, hidden = 6, 12
  x = jnp.zeros((1, dim))
  p = flow_lib.MADE(hidden).init(jax.random.PRNGKey(0), x)['params']
  for i, fan_in in enumerate((dim, hidden, hidden)):
    for leaf in (p[f'kernel_{i}'], p[f'bias_{i}']):
      bound = 1 / np.sqrt(fan_in)
      assert bound * 0.7 < np.abs(leaf).max() <= bound
  old = flow_lib.MADE(hidden, out_scale=1e-2).init(jax.random.PRNGKey(0), x)[
    'params'
  ]
  assert not any(np.any(old[f'bias_{i}']) for i in range(3))
  assert np.std(old['kernel_2']) < 0.1 * np.std(p['kernel_2'])


def _trained_maf(dim, seed, scale=0.4):
  """A MAF with random weights and non-trivial running statistics."""
  maf = flow_lib.MAF(dim, num_blocks=2)
  shapes = jax.eval_shape(
    functools.partial(maf.init, train=True),
    jax.random.PRNGKey(seed),
    jnp.zeros((2, dim)),
  )
  v = {
    'params': _randomize(shapes['params'], seed, scale),
    'batch_stats': {
      name: {'mean': np.zeros(dim), 'var': np.ones(dim)}
      for name in shapes['batch_stats']
    },
  }
  x = np.random.default_rng(seed).normal(0.5, 2.0, (64, dim))
  train_step = jax.jit(
    lambda v, x: maf.apply(v, x, train=True, mutable=['batch_stats'])
  )
  for _ in range(3):
    _, upd = train_step(v, jnp.asarray(x))
    v = {'params': v['params'], 'batch_stats': upd['batch_stats']}
  return maf, v


def test_maf_logdet_matches_jacobian_and_inverts():
  with jax.enable_x64(True):
    dim = 4
    maf, v = _trained_maf(dim, seed=9)
    x = jnp.asarray(np.random.default_rng(10).standard_normal((6, dim)))
    z, logdet = maf.apply(v, x, train=False)
    jac = _per_sample_jacobians(
      lambda xi: maf.apply(v, xi[None], train=False)[0][0], x
    )
    np.testing.assert_allclose(
      logdet, np.linalg.slogdet(jac)[1], rtol=1e-9, atol=1e-9
    )
    # The second block runs in reversed order, so the composite Jacobian is
    # full; two blocks of the same order would leave it lower-triangular.
    assert np.triu(jac, 1).any() and np.tril(jac, -1).any()
    back = maf.apply(v, z, method=flow_lib.MAF.inverse)
    np.testing.assert_allclose(back, x, atol=1e-8)
    # Train-mode log-det is the sum of the layers' (batch stats frozen).
    (_, ld_train), _ = maf.apply(v, x, train=True, mutable=['batch_stats'])
    assert np.all(np.isfinite(ld_train))
    assert not np.allclose(ld_train, logdet)  # Different statistics.


def test_expanded_distance_equals_direct_form():
  rng = np.random.default_rng(11)
  z = jnp.asarray(rng.normal(0, 3, (7, 5)), jnp.float32)
  centers = flow_lib.make_centers(jax.random.PRNGKey(1), 13, 5, 0.05)
  np.testing.assert_allclose(
    flow_lib.component_log_likelihoods(z, centers),
    flow_lib.component_log_likelihoods_direct(z, centers),
    rtol=1e-5,
  )
  # Against scipy, from scratch.
  logp, _ = flow_lib.mixture_log_prob(z, centers)
  c = np.asarray(centers, np.float64)
  comp = np.stack(
    [
      stats.multivariate_normal(ck, np.eye(5)).logpdf(np.asarray(z, np.float64))
      for ck in c
    ],
    -1,
  )
  np.testing.assert_allclose(
    logp, special.logsumexp(comp, -1) - math.log(13), rtol=1e-5
  )


def test_center_statistics():
  c = np.asarray(flow_lib.make_centers(jax.random.PRNGKey(0), 500, 64, 0.05))
  assert c.shape == (500, 64)
  assert abs(c.std() - 0.05) < 0.002 and abs(c.mean()) < 0.002


def test_mixture_density_integrates_to_one_1d():
  with jax.enable_x64(True):
    centers = jnp.asarray([[-1.5], [0.2], [2.0]])
    grid = jnp.linspace(-14, 14, 28001)[:, None]
    logp, _ = flow_lib.mixture_log_prob(grid, centers)
    assert abs(np.trapezoid(np.exp(logp), np.asarray(grid[:, 0])) - 1) < 1e-8


def test_mixture_density_integrates_to_one_2d():
  with jax.enable_x64(True):
    centers = jnp.asarray([[-1.0, 0.5], [0.3, -2.0], [2.0, 1.0], [0.0, 0.0]])
    t = np.linspace(-12, 12, 601)
    xx, yy = np.meshgrid(t, t, indexing='ij')
    logp, _ = flow_lib.mixture_log_prob(
      jnp.asarray(np.stack([xx.ravel(), yy.ravel()], 1)), centers
    )
    dens = np.exp(np.asarray(logp)).reshape(xx.shape)
    mass = np.trapezoid(np.trapezoid(dens, t, axis=1), t)
    assert abs(mass - 1) < 1e-8


def test_flow_density_integrates_to_one_2d():
  with jax.enable_x64(True):
    maf, v = _trained_maf(2, seed=12, scale=0.3)
    centers = jnp.asarray([[-0.5, 0.5], [0.3, -0.2], [0.6, 0.4]])
    t = np.linspace(-25, 25, 801)
    xx, yy = np.meshgrid(t, t, indexing='ij')
    logp, cluster, _ = jax.jit(
      lambda v, x: flow_lib.flow_outputs(maf, v, x, centers)
    )(v, jnp.asarray(np.stack([xx.ravel(), yy.ravel()], 1)))
    dens = np.exp(np.asarray(logp)).reshape(xx.shape)
    mass = np.trapezoid(np.trapezoid(dens, t, axis=1), t)
    assert abs(mass - 1) < 1e-5
    assert set(np.unique(cluster)) <= {0, 1, 2}
