"""Stage-1 step time of the plain MiSLAS backbone vs LCReg, in one run.

  python benchmarks/step_time.py --config=configs/cifar10_lt.py
  python benchmarks/step_time.py --config=configs/imagenet_lt.py \
      --variants=plain,full,diagonal --batch=16

Variants (`--variants`, comma-separated): `plain` (MiSLAS: no latent module,
classifier on the feature), `lcreg` (the config's `model.latent.covariance`),
`full` (LCReg with the M × D × D covariance) and `diagonal` (LCReg with the
M × D one). The default, `plain,lcreg`, is the comparison this script always
made. `--batch` overrides `stage1.batch_size` (the global batch, split over
the devices), e.g. so that a 224² ResNet-50 fits the machine.

Random inputs of the config's image shape; the data source is never opened
(only `data.image_size`, `data.channels` and `data.num_classes` are read), so
configs whose files are not on this machine work too. Every variant is
compiled and warmed up first, then all are timed alternately (rounds × steps,
`block_until_ready`) so that they see the same machine conditions. Prints per
variant the median ms/step, images/s, the spread over rounds, the train-state
bytes (parameters + optimiser + BatchNorm statistics + latent moments, from
the arrays' `nbytes`), the memory XLA plans for one step (arguments + outputs
+ temporaries - donated, per device), the peak device memory where the
backend reports it (GPU/TPU; cumulative over the variants built so far, in
`--variants` order), and each LCReg variant's ratio to `plain`; the last lines
are the step-time ratios.
"""

import functools
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from lcreg_jax import cli
from lcreg_jax import config as config_lib
from lcreg_jax import optim
from lcreg_jax import parallel
from lcreg_jax import train_state
from lcreg_jax.models import network
from lcreg_jax.models import resnet
from lcreg_jax.steps import stage1

config_flags.DEFINE_config_file(
  'config', 'configs/cifar10_lt.py', 'Config whose model and stage1 are timed.'
)
flags.DEFINE_list(
  'variants',
  ['plain', 'lcreg'],
  'Which steps to time: plain, lcreg (the config\'s '
  'covariance), full, diagonal.',
)
flags.DEFINE_integer(
  'batch', None, 'Global batch size; default: the config\'s stage1.batch_size.'
)
flags.DEFINE_integer('steps', 5, 'Timed steps per variant and round.')
flags.DEFINE_integer('rounds', 5, 'Alternating timing rounds.')
flags.DEFINE_integer('warmup', 3, 'Untimed steps after compilation.')
FLAGS = flags.FLAGS

VARIANTS = ('plain', 'lcreg', 'full', 'diagonal')


def variant_config(config, variant: str, batch: int | None):
  """The resolved config of one variant (data keys untouched, never read)."""
  config = config.copy_and_resolve_references()
  if batch is not None:
    config.stage1.batch_size = batch
  config.model.latent.enabled = variant != 'plain'
  if variant == 'plain':
    config.model.classify_on = 'feature'
  elif variant in ('full', 'diagonal'):
    config.model.latent.covariance = variant
  return config_lib.resolve_and_validate(config)


def state_bytes(state) -> dict[str, int]:
  """Bytes of the train state by part, from the arrays themselves."""
  nbytes = lambda tree: sum(int(x.nbytes) for x in jax.tree.leaves(tree))
  parts = dict(
    params=nbytes(state.params),
    opt_state=nbytes(state.opt_state),
    batch_stats=nbytes(state.batch_stats),
    latent_moments=nbytes(state.cov),
  )
  parts['total'] = sum(parts.values())
  return parts


def build(config, variant: str, mesh, batch: int | None = None):
  """A compiled stage-1 step, its state and one random batch."""
  config = variant_config(config, variant, batch)
  cfg, c = config.stage1, config.data
  shape = (c.image_size, c.image_size, c.channels)
  model = network.make_model(config.model, c.num_classes)
  tx = optim.stage1_optimizer(config, 0.01)
  state = parallel.replicate(
    train_state.create_train_state(
      model, jax.random.key(0), shape, tx, config.model
    ),
    mesh,
  )
  hp = stage1.Stage1Hparams.from_config(config, total_steps=1000)
  step = parallel.jit_step(
    functools.partial(stage1.train_step, hp=hp), mesh, state
  )
  bs = cfg.batch_size
  batch = jax.device_put(
    dict(
      image=jnp.asarray(
        np.random.default_rng(0).normal(size=(bs, *shape)), jnp.float32
      ),
      label=jnp.arange(bs, dtype=jnp.int32) % c.num_classes,
    ),
    parallel.batch_sharding(mesh),
  )
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  step_mem = None
  if mem is not None:
    step_mem = (
      mem.argument_size_in_bytes
      + mem.output_size_in_bytes
      + mem.temp_size_in_bytes
      - mem.alias_size_in_bytes
    )
  return dict(
    step=compiled,
    state=state,
    batch=batch,
    batch_size=bs,
    state_bytes=state_bytes(state),
    step_memory=step_mem,
    compile_s=compile_s,
    config=config,
  )


def run_steps(m, n: int) -> float:
  """Seconds per step over n steps (the state is carried, as in training)."""
  if n <= 0:
    return 0.0
  t0 = time.perf_counter()
  for _ in range(n):
    m['state'], metrics = m['step'](m['state'], m['batch'])
  jax.block_until_ready(metrics)
  return (time.perf_counter() - t0) / max(n, 1)


def peak_device_memory() -> int | None:
  """The backend's peak bytes in use on device 0; None where not reported
  (XLA:CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return None if peak is None else int(peak)


def mib(n) -> str:
  return 'n/a' if n is None else f'{n / 2**20:.1f} MiB'


def time_variants(
  config,
  variants,
  *,
  batch=None,
  steps=5,
  rounds=5,
  warmup=3,
  mesh=None,
  log=print,
):
  """Builds, warms up and times `variants` alternately; returns one result
  dict per variant (in order) with the times of every round."""
  unknown = [v for v in variants if v not in VARIANTS]
  if unknown or not variants or len(set(variants)) != len(variants):
    raise app.UsageError(
      f'--variants={",".join(variants)}: give distinct '
      f'names out of {", ".join(VARIANTS)}'
    )
  if mesh is None:
    mesh = parallel.make_mesh(
      config_lib.resolve_and_validate(config).num_devices
    )
  models = {}
  for name in variants:
    models[name] = m = build(config, name, mesh, batch)
    t0 = time.perf_counter()
    run_steps(m, 1)
    log(
      f'{name}: compiled in {m["compile_s"]:.1f} s, ran the first step in '
      f'{time.perf_counter() - t0:.1f} s'
    )
    run_steps(m, warmup)
    m['peak'] = peak_device_memory()
  # Alternate the variants over several rounds and take medians, so that a
  # slow phase of a shared machine hits all of them alike.
  for m in models.values():
    m['times'] = []
  for _ in range(rounds):
    for m in models.values():
      m['times'].append(run_steps(m, steps))
  results = []
  for name, m in models.items():
    ts = m['times']
    dt = float(np.median(ts))
    latent = m['config'].model.latent
    results.append(
      dict(
        variant=name,
        covariance=latent.covariance if latent.enabled else None,
        batch_size=m['batch_size'],
        times=ts,
        ms_per_step=1e3 * dt,
        images_per_s=m['batch_size'] / dt,
        spread_ms=(1e3 * min(ts), 1e3 * max(ts)),
        state_bytes=m['state_bytes'],
        step_memory=m['step_memory'],
        peak_device_memory=m['peak'],
      )
    )
  return results


def report(results, steps: int, log=print):
  """Per-variant lines, a Markdown table, then the step-time ratios."""
  backend = jax.default_backend()
  peak_na = f'n/a on {backend.upper()}'
  base = next((r for r in results if r['variant'] == 'plain'), None)
  for r in results:
    peak = (
      peak_na
      if r['peak_device_memory'] is None
      else mib(r['peak_device_memory'])
    )
    lo, hi = r['spread_ms']
    total = r['state_bytes']['total']
    log(
      f'{r["variant"]:8s} {r["ms_per_step"]:9.2f} ms/step  '
      f'{r["images_per_s"]:9.2f} images/s  (median of {len(r["times"])} '
      f'rounds of {steps} steps; spread {lo:.0f}-{hi:.0f} ms)  state '
      f'{total} bytes ({total / 2**20:.1f} MiB, latent moments '
      f'{r["state_bytes"]["latent_moments"]})  XLA '
      f'step memory {mib(r["step_memory"])}  peak device memory {peak}'
    )
  log('')
  log(
    '| variant | ms/step | images/s | spread (ms) | state (bytes) | '
    'XLA step memory | peak device memory | step time / plain | '
    'state / plain |'
  )
  log('|---|---|---|---|---|---|---|---|---|')
  for r in results:
    name = r['variant'] + (
      f' ({r["covariance"]})' if r['variant'] == 'lcreg' else ''
    )
    peak = (
      peak_na
      if r['peak_device_memory'] is None
      else mib(r['peak_device_memory'])
    )
    if base is None:
      ratio_t = ratio_s = 'n/a'
    else:
      ratio_t = f'{r["ms_per_step"] / base["ms_per_step"]:.3f}'
      ratio = r['state_bytes']['total'] / base['state_bytes']['total']
      ratio_s = f'{ratio:.2f}'
    lo, hi = r['spread_ms']
    log(
      f'| {name} | {r["ms_per_step"]:.1f} | {r["images_per_s"]:.2f} | '
      f'{lo:.0f}-{hi:.0f} | {r["state_bytes"]["total"]:,} | '
      f'{mib(r["step_memory"])} | {peak} | {ratio_t} | {ratio_s} |'
    )
  log('')
  if base is not None:
    for r in results:
      if r is not base:
        log(
          f'ratio {r["variant"]}/plain step time: '
          f'{r["ms_per_step"] / base["ms_per_step"]:.3f}'
        )


def main(argv):
  del argv
  config = FLAGS.config
  if FLAGS.batch is not None:
    config = config.copy_and_resolve_references()
    config.stage1.batch_size = FLAGS.batch
  resolved = config_lib.resolve_and_validate(config)
  mesh = parallel.make_mesh(resolved.num_devices)
  latent = config.model.latent
  print(
    f'JAX {jax.__version__} on {jax.devices()[0].device_kind} ×'
    f'{mesh.devices.size}; {config.model.backbone}, batch '
    f'{config.stage1.batch_size}, {config.data.image_size}²×'
    f'{config.data.channels}, {config.data.num_classes} classes, '
    f'M={latent.num_latents}, D={resnet.feature_dim(config.model.backbone)}, '
    f'covariance (lcreg)={latent.covariance}; '
    f'variants {",".join(FLAGS.variants)}'
  )
  results = time_variants(
    config,
    FLAGS.variants,
    steps=FLAGS.steps,
    rounds=FLAGS.rounds,
    warmup=FLAGS.warmup,
    mesh=mesh,
  )
  report(results, FLAGS.steps)
  sys.stdout.flush()


if __name__ == '__main__':
  cli.run(main)
