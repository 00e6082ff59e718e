"""Latent moments split along M over the mesh (docs/method.md §9, `shard_covariance`):
the layout is what `parallel.state_sharding` says, everywhere (placement, the
jitted step, checkpoints), the results equal the replicated computation, and
no M × D × D array crosses devices."""

import functools
import re
import subprocess
import sys

import jax
import jax.extend
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from lcreg_jax import checkpoints
from lcreg_jax import config as config_lib
from lcreg_jax import covariance
from lcreg_jax import errors
from lcreg_jax import losses
from lcreg_jax import optim
from lcreg_jax import parallel
from lcreg_jax import train_state
from lcreg_jax.models import network
from lcreg_jax.stages import stage1 as stage1_stage
from lcreg_jax.steps import stage1
from tests import cli
from tests import tiny
from tests.steps import test_stage1 as step_tests

M, D = 8, 64  # tiny config with 8 latents: 2 per device; ResNet-8's D


def _mesh():
  assert len(jax.devices()) >= 4, 'conftest should give 4 CPU devices'
  return parallel.make_mesh(4)


def _config(**latent):
  cfg = tiny.tiny_config()
  cfg.model.latent.num_latents = M
  cfg.model.latent.update(latent)
  return cfg


def _state(cfg):
  resolved = config_lib.resolve_and_validate(cfg, num_visible_devices=4)
  model = network.make_model(resolved.model, 10)
  tx = optim.stage1_optimizer(
    resolved,
    optim.stage1_schedule(
      resolved.stage1, step_tests.STEPS_PER_EPOCH, step_tests.TOTAL
    ),
  )
  return train_state.create_train_state(
    model, jax.random.key(0), (8, 8, 1), tx, resolved.model
  )


def _spd(rng, m, d, diagonal):
  a = rng.normal(size=(m, d, d))
  cov = np.einsum('mde,mfe->mdf', a, a) / d
  return np.stack([np.diag(c) for c in cov]) if diagonal else cov


def _assert_split(arr, mesh, rows):
  assert arr.sharding.spec == P('data')
  assert arr.sharding.mesh == mesh
  shards = arr.addressable_shards
  assert len(shards) == 4
  assert {s.data.shape for s in shards} == {(rows // 4, *arr.shape[1:])}
  # Each device holds its own rows, not a copy of another's.
  assert sorted(s.index[0].start for s in shards) == list(
    range(0, rows, rows // 4)
  )


def test_state_sharding_splits_only_the_latent_moments():
  mesh = _mesh()
  state = _state(_config())
  # Fresh moments are host zeros, so that placing them puts only each
  # device's rows on it (never the whole M × D × D on the default device).
  assert all(
    isinstance(x, np.ndarray) and not isinstance(x, jax.Array)
    for x in state.cov
  )
  placed = parallel.place(state, mesh, shard_covariance=True)
  for leaf in placed.cov:
    _assert_split(leaf, mesh, M)
  others = jax.tree.leaves(placed.replace(cov={}))
  assert others and all(x.sharding.spec == P() for x in others)
  # The same function describes shapes (what jit_step and checkpoints use).
  shapes = jax.eval_shape(lambda: state)
  spec = parallel.state_sharding(shapes, mesh, shard_covariance=True)
  assert (
    spec.cov.cov.spec == P('data')
    and spec.params['head']['fc']['kernel'].spec == P()
  )
  assert jax.tree.all(
    jax.tree.map(
      lambda s: s.spec == P(),
      parallel.state_sharding(shapes, mesh, shard_covariance=False),
    )
  )
  # A state without latent moments has nothing to split.
  plain = parallel.place(state.replace(cov={}), mesh, shard_covariance=True)
  assert all(x.sharding.spec == P() for x in jax.tree.leaves(plain))
  # JAX shards evenly only: 6 latents on 4 devices are refused, not padded.
  uneven = state.replace(cov=covariance.init_covariance(6, D))
  with pytest.raises(ValueError, match='M = 6 rows'):
    parallel.state_sharding(uneven, mesh, shard_covariance=True)


@pytest.mark.parametrize('diagonal', [False, True])
def test_sharded_update_equals_replicated(diagonal):
  mesh = _mesh()
  rng = np.random.default_rng(0)
  start = covariance.init_covariance(M, 16, diagonal)
  # Unequal moments on every latent, so that a row mix-up would show.
  start = start._replace(
    mean=jnp.asarray(rng.normal(size=(M, 16)), jnp.float32),
    cov=jnp.asarray(_spd(rng, M, 16, diagonal), jnp.float32),
    count=jnp.arange(M, dtype=jnp.float32) * 3,
  )
  batches = [
    jnp.asarray(
      rng.normal(size=(8, M, 16)) * (1 + np.arange(M))[None, :, None] + i,
      jnp.float32,
    )
    for i in range(3)
  ]
  results = {}
  for shard in (False, True):
    state_sh = (
      parallel.covariance_sharding(mesh) if shard else parallel.replicated(mesh)
    )
    update = jax.jit(
      functools.partial(
        covariance.update_covariance_grouped, mesh=mesh if shard else None
      ),
      in_shardings=(state_sh, parallel.batch_sharding(mesh)),
      out_shardings=state_sh,
    )
    state = jax.device_put(start, state_sh)
    for b in batches:
      state = update(state, jax.device_put(b, parallel.batch_sharding(mesh)))
    results[shard] = state
  for leaf in results[True]:
    _assert_split(leaf, mesh, M)
  for a, b in zip(results[False], results[True]):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * np.abs(a).max())
  # And both are ISDA's pooled update, here in float64 NumPy.
  mean, cov, count = (np.asarray(x, np.float64) for x in start)
  for b in batches:
    b = np.asarray(b, np.float64)
    b_mean = b.mean(0)
    centred = b - b_mean
    b_cov = (
      np.einsum('bcd,bcd->cd', centred, centred)
      if diagonal
      else np.einsum('bcd,bce->cde', centred, centred)
    ) / len(b)
    w = len(b) / (count + len(b))
    diff = mean - b_mean
    cross = diff * diff if diagonal else np.einsum('cd,ce->cde', diff, diff)
    wc = w[:, None] if diagonal else w[:, None, None]
    cov = (1 - wc) * cov + wc * b_cov + wc * (1 - wc) * cross
    mean = (1 - w[:, None]) * mean + w[:, None] * b_mean
    count = count + len(b)
  for got, want in zip(results[True], (mean, cov, count)):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('diagonal', [False, True])
def test_sharded_sigma2_table_and_gradient_equal_replicated(diagonal):
  mesh = _mesh()
  rng = np.random.default_rng(1)
  c, d = 12, 16
  w = jnp.asarray(rng.normal(size=(d, c)), jnp.float32)
  cov_np = _spd(rng, c, d, diagonal)
  coeff = jnp.asarray(rng.normal(size=(c, c)), jnp.float32)

  def run(shard):
    def f(w, cov):
      table = losses.isda_sigma2_table(
        w, cov, 0.7, mesh=mesh if shard else None
      )
      return (coeff * table).sum(), table

    sh = (
      parallel.covariance_sharding(mesh) if shard else parallel.replicated(mesh)
    )
    rep = parallel.replicated(mesh)
    fn = jax.jit(jax.value_and_grad(f, has_aux=True), in_shardings=(rep, sh))
    return fn(w, jax.device_put(jnp.asarray(cov_np, jnp.float32), sh))

  (v0, t0), g0 = run(False)
  (v1, t1), g1 = run(True)
  assert t1.sharding.spec == P('data')  # rows stay where their Σ_m is
  np.testing.assert_allclose(
    np.asarray(t1), np.asarray(t0), rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(float(v1), float(v0), rtol=1e-5)
  np.testing.assert_allclose(
    np.asarray(g1), np.asarray(g0), rtol=1e-5, atol=1e-4
  )
  # Against a float64 reference: σ²[m, j] = λ (w_j - w_m)ᵀ Σ_m (w_j - w_m).
  wn = np.asarray(w, np.float64)
  full = np.stack([np.diag(x) for x in cov_np]) if diagonal else cov_np
  diff = wn[None, :, :] - wn.T[:, :, None]
  ref = 0.7 * np.einsum('mdj,mde,mej->mj', diff, full, diff)
  np.testing.assert_allclose(np.asarray(t1), ref, rtol=1e-4, atol=1e-4)


def _largest_intermediate(jaxpr) -> int:
  """Elements of the largest value any equation of `jaxpr` (and of the
  jaxprs inside it: scan bodies, remat, shard_map) produces."""
  big = 0
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      big = max(big, int(np.prod(getattr(v.aval, 'shape', ()))))
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      big = max(big, _largest_intermediate(sub))
  return big


@pytest.mark.parametrize('diagonal', [False, True])
def test_class_wise_sigma2_never_forms_a_class_by_dim_by_class_tensor(diagonal):
  rng = np.random.default_rng(2)
  c, d = 96, 32
  w = jnp.asarray(rng.normal(size=(d, c)), jnp.float32)
  cov = jnp.asarray(_spd(rng, c, d, diagonal), jnp.float32)
  cdc = c * d * c
  block = 5 * 4 * d * c  # 5 rows at a time (96 = 19 · 5 + 1)

  def loss(w, cov, block_bytes):
    return (
      losses.isda_sigma2_table(w, cov, 0.5, block_bytes=block_bytes) ** 2
    ).sum()

  grad = jax.value_and_grad(loss)
  jaxpr = jax.make_jaxpr(functools.partial(grad, block_bytes=block))(w, cov)
  # (The largest value left is the covariance itself, C·D·D, passing
  # through stop_gradient.)
  assert _largest_intermediate(jaxpr.jaxpr) < cdc / 2
  compiled = (
    jax.jit(functools.partial(grad, block_bytes=block)).lower(w, cov).compile()
  )
  assert compiled.memory_analysis().temp_size_in_bytes < 4 * cdc / 2
  # The detector sees the all-rows form (and the formula the table had
  # before: the (C, D, C) differences at once).
  whole = jax.make_jaxpr(functools.partial(grad, block_bytes=2**40))(w, cov)
  assert _largest_intermediate(whole.jaxpr) >= cdc
  v0, g0 = jax.jit(functools.partial(grad, block_bytes=2**40))(w, cov)
  v1, g1 = compiled(w, cov)
  np.testing.assert_allclose(float(v1), float(v0), rtol=1e-5)
  np.testing.assert_allclose(
    np.asarray(g1),
    np.asarray(g0),
    rtol=1e-5,
    atol=1e-6 * np.abs(np.asarray(g0)).max(),
  )


def _run_steps(cfg, mesh, shard, steps=2, hp=None, compiled_text=False):
  state = parallel.place(_state(cfg), mesh, shard)
  hp = hp or step_tests._hp(cfg)  # pylint: disable=protected-access
  step = parallel.jit_step(
    functools.partial(
      stage1.train_step, hp=hp, cov_mesh=mesh if shard else None
    ),
    mesh,
    state,
    shard,
  )
  first = jax.device_put(
    step_tests.batch(seed=0), parallel.batch_sharding(mesh)
  )
  if compiled_text:
    return step.lower(state, first).compile().as_text()
  for i in range(steps):
    state, metrics = step(
      state,
      jax.device_put(step_tests.batch(seed=i), parallel.batch_sharding(mesh)),
    )
  return state, jax.device_get(metrics)


# The explicit variant with a full covariance, replicated over 4 XLA:CPU
# devices, deadlocks in a collective (already before the moments could be
# split), so its reference runs replicated on one device; sums over the batch
# then run in another order, hence the looser tolerance.
@pytest.mark.slow
@pytest.mark.parametrize(
  'explicit,cov,ref_devices,tol',
  [
    (False, 'full', 4, 2e-5),
    (True, 'full', 1, 2e-4),
    (False, 'diagonal', 4, 2e-5),
  ],
)
def test_stage1_step_sharded_equals_replicated(explicit, cov, ref_devices, tol):
  mesh = _mesh()
  cfg = _config(covariance=cov)
  # λ0 large enough that the σ² table moves the loss and the gradients.
  hp = step_tests._hp(cfg, explicit_latent_aug=explicit, isda_lambda0=20.0)  # pylint: disable=protected-access
  rep_state, rep_m = _run_steps(
    cfg, parallel.make_mesh(ref_devices), False, hp=hp
  )
  sh_state, sh_m = _run_steps(cfg, mesh, True, hp=hp)
  for leaf in sh_state.cov:
    _assert_split(leaf, mesh, M)
  assert rep_state.cov.cov.sharding.spec == P()
  close = functools.partial(np.testing.assert_allclose, rtol=tol, atol=tol / 10)
  for key in ('loss', 'aug_loss', 'recon_loss', 'cls_loss'):
    close(sh_m[key], rep_m[key])
  rep_host, sh_host = jax.device_get(rep_state), jax.device_get(sh_state)
  jax.tree.map(close, sh_host.params, rep_host.params)
  jax.tree.map(close, sh_host.batch_stats, rep_host.batch_stats)
  jax.tree.map(close, sh_host.cov, rep_host.cov)
  np.testing.assert_array_equal(sh_host.cov.count, 32)
  assert np.abs(sh_host.cov.cov).max() > 1e-3


def _covariance_collectives(hlo: str, m: int, d: int) -> list[str]:
  """Collective ops of compiled HLO that move an M × D × D operand, whole or
  as a shard of rows (also as (k, D·D) or flat)."""
  found = []
  sizes = {m * d * d, m * d * d // 4}
  for line in hlo.splitlines():
    if not re.search(
      r'\b(all-gather|all-reduce|reduce-scatter|all-to-all|'
      r'collective-permute)(-start)?\(',
      line,
    ):
      continue
    for dims in re.findall(r'[a-z0-9]+\[([0-9,]*)\]', line):
      shape = tuple(int(x) for x in dims.split(',') if x)
      if (
        (len(shape) == 3 and shape[1:] == (d, d))
        or d * d in shape
        or int(np.prod(shape)) in sizes
      ):
        found.append(line.strip()[:160])
        break
  return found


@pytest.mark.slow
def test_sharded_step_moves_no_covariance_between_devices():
  mesh = _mesh()
  cfg = _config()
  sharded = _run_steps(cfg, mesh, True, compiled_text=True)
  assert _covariance_collectives(sharded, M, D) == []
  # Replicated, every device sums its images' batch moments and XLA
  # all-reduces the M × D × D partial sums: the check does see that.
  replicated = _run_steps(cfg, mesh, False, compiled_text=True)
  assert _covariance_collectives(replicated, M, D)


def test_checkpoint_restores_the_split_layout(tmp_path):
  mesh = _mesh()
  rng = np.random.default_rng(3)
  state = _state(_config())
  values = covariance.CovarianceState(
    mean=jnp.asarray(rng.normal(size=(M, D)), jnp.float32),
    cov=jnp.asarray(rng.normal(size=(M, D, D)), jnp.float32),
    count=jnp.arange(M, dtype=jnp.float32),
  )
  saved = parallel.place(state.replace(cov=values), mesh, True)
  ckpt = checkpoints.StageCheckpoints(tmp_path / 'c', {'m': 1})
  ckpt.save(3, saved)
  ckpt.close()
  # Restored into a template placed the same way (as the stages do): the
  # same split and values.
  template = parallel.place(state, mesh, True)
  ckpt = checkpoints.StageCheckpoints(tmp_path / 'c', {'m': 1})
  step, restored = ckpt.restore_latest(template)
  ckpt.close()
  assert step == 3
  for got, want in zip(restored.cov, values):
    _assert_split(got, mesh, M)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert all(
    x.sharding.spec == P() for x in jax.tree.leaves(restored.replace(cov={}))
  )
  # The files do not depend on the layout: a replicated run (one device,
  # or shard_covariance=False) restores the same values.
  ckpt = checkpoints.StageCheckpoints(tmp_path / 'c', {'m': 1})
  _, replicated = ckpt.restore_latest(parallel.place(state, mesh, False))
  ckpt.close()
  assert replicated.cov.cov.sharding.spec == P()
  np.testing.assert_array_equal(np.asarray(replicated.cov.cov), values.cov)


def _resolve(devices=4, **overrides):
  cfg = tiny.tiny_config()
  for key, value in overrides.items():
    cfg_part, leaf = cfg, key.split('__')
    for p in leaf[:-1]:
      cfg_part = cfg_part[p]
    cfg_part[leaf[-1]] = value
  return config_lib.resolve_and_validate(cfg, num_visible_devices=devices)


def test_shard_covariance_resolves_from_the_mesh_and_the_latents():
  # Unset: full covariance over several devices that divide M.
  assert _resolve().shard_covariance is True  # M = 4, 4 devices
  assert _resolve(devices=1).shard_covariance is False
  assert (
    _resolve(model__latent__covariance='diagonal').shard_covariance is False
  )
  assert _resolve(model__latent__num_latents=6).shard_covariance is False
  assert _resolve(model__latent__enabled=False).shard_covariance is False
  # Set: True splits a diagonal one too; False always replicates.
  assert (
    _resolve(
      shard_covariance=True, model__latent__covariance='diagonal'
    ).shard_covariance
    is True
  )
  assert _resolve(shard_covariance=False).shard_covariance is False
  with pytest.raises(errors.ConfigError) as e:
    _resolve(shard_covariance=True, model__latent__num_latents=6)
  msg = str(e.value)
  assert (
    'shard_covariance=True splits the latent moments along M over the '
    '4 devices, but model.latent.num_latents=6 is not divisible by 4' in msg
  )
  assert 'e.g. 4 or 8' in msg and 'leave shard_covariance unset' in msg


def test_replicated_full_covariance_is_logged_with_its_reason(caplog):
  caplog.set_level('INFO')
  # absl's own logger may have been set to WARNING by an earlier test.
  caplog.set_level('INFO', logger='absl')
  mesh = _mesh()
  stage1_stage.log_covariance_layout(
    _resolve(model__latent__num_latents=6), mesh
  )
  assert (
    'M = 6 is not divisible by the 4 devices' in caplog.text
    and 'num_latents=8' in caplog.text
  )
  caplog.clear()
  stage1_stage.log_covariance_layout(_resolve(), mesh)
  assert 'split along M over 4 devices (1 of the 4 latents each)' in (
    caplog.text
  )


def test_state_size_reports_bytes_per_device():
  res = subprocess.run(
    [
      sys.executable,
      'benchmarks/state_size.py',
      '--config=tests/tiny.py',
      '--devices=1,4,8',
    ],
    cwd=cli.ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert res.returncode == 0, res.stderr[-2000:]
  rows = {}
  for line in res.stdout.splitlines():
    cells = [c.strip() for c in line.split('|')[1:-1]]
    if len(cells) == 5 and cells[0].isdigit():
      rows[int(cells[0]), cells[1]] = cells[2:]
  assert len(rows) == 6
  # tests/tiny.py: M = 4 latents, D = 64. Split over 4 devices, each holds a
  # quarter of the moments; 8 devices do not divide M = 4, so they stay whole.
  moments = (4 * 64 * 64 + 4 * 64 + 4) * 4 / 2**20
  rep = {n: float(rows[n, 'full'][0]) for n in (1, 4, 8)}
  assert rep[1] == rep[4] == rep[8]
  assert float(rows[1, 'full'][1]) == rep[1]
  assert float(rows[4, 'full'][1]) == pytest.approx(
    rep[4] - 0.75 * moments, abs=1.1e-3
  )
  assert rows[8, 'full'][1] == '-'
  assert [rows[n, 'full'][2] for n in (1, 4, 8)] == [
    'replicated',
    'split',
    'replicated',
  ]
  assert rows[4, 'diagonal'][2] == 'replicated'
