"""Compiles a run's programs for a TPU slice or NVIDIA GPUs without them.

  python -m lcreg_jax.aot --config=configs/imagenet_lt.py --target=tpu:v5e:4x4
      [--json] [--programs=stage1,stage2,eval,dlsa] [--config.KEY=VALUE ...]

Targets: `tpu:<topology>` (any name libtpu knows: v4:2x2x1, v5e:4x4,
v5p:2x2x1, v6e:4x4, v4:4x4x4, ...; needs the `tpu` extra) and
`gpu:h100:<n>` / `gpu:h200:<n>` (needs the `cuda12` extra, no GPU). The
stage-1, stage-2 and evaluation steps, and DLSA's flow and classifier
steps, are built by the functions training builds them with
(`stages.stage1.make_step`, `stages.stage2.make_step`,
`evaluate.predict.eval_step`, `dlsa.flow_training.flow_train_fns`,
`dlsa.classifiers.classifier_fns`), traced on shapes only (no data, no
parameters) in the run's shardings, and compiled by the target's XLA.

Per program it reports the HBM one device needs (arguments + outputs +
temporaries - donated aliases + code), the chip's capacity and headroom,
FLOPs per image and a roofline estimate of images/s per chip
(`lcreg_jax.chips`). A program that does not fit is named with its largest
buffers and the switches that help, and the command exits 1. docs/compile.md
has the measured table.
"""

import os

# Compile-only devices: JAX must not try to start the host's accelerator,
# and libtpu must not wait for a GCE metadata server. Set before JAX loads.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
# libtpu locks /tmp/libtpu_lockfile so that two processes never share a
# TPU; compile-only use touches none, so tests and runs may overlap.
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

import dataclasses  # pylint: disable=g-import-not-at-top,wrong-import-position
import functools
import json
import re
import time

from absl import flags
import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding
import numpy as np

from lcreg_jax import chips
from lcreg_jax import cli as cli_lib
from lcreg_jax import config as config_lib
from lcreg_jax import errors
from lcreg_jax import main as main_lib
from lcreg_jax import parallel
from lcreg_jax import train_state
from lcreg_jax.config import validate
from lcreg_jax.data import dataset as dataset_lib
from lcreg_jax.models import network

USAGE = (
  'python -m lcreg_jax.aot --config=configs/imagenet_lt.py '
  '--target=tpu:v5e:4x4 [--json] [--programs=stage1,...] '
  '[--config.KEY=VALUE ...]'
)
PROGRAMS = ('stage1', 'stage2', 'eval', 'dlsa')

# Images in the published splits (train, val, test): the sizes set the
# schedule and DLSA's feature arrays; nothing is read.
DATA_SIZES = {
  'imagenet_lt': (115_846, 20_000, 50_000),
  'inat2018': (437_513, 0, 24_426),
  'places_lt': (62_500, 7_300, 36_500),
}


class CompileError(errors.UserError):
  """A target that cannot be compiled for, or a program that does not fit."""


@dataclasses.dataclass(frozen=True)
class Target:
  spec: str  # as given on the command line
  platform: str  # 'tpu' | 'cuda', for lowering
  devices: tuple  # compile-only devices, in mesh order

  @property
  def hosts(self) -> int:
    return len({d.process_index for d in self.devices})

  @property
  def chip(self) -> chips.Chip:
    return chips.chip(self.devices[0].device_kind)

  @property
  def devices_per_chip(self) -> int:
    """TPU v4 compiles per TensorCore: two devices share one chip's HBM."""
    coords = [tuple(getattr(d, 'coords', (d.id,))) for d in self.devices]
    return len(coords) // len(set(coords))


def tpu_devices(topology: str):
  try:
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

    return topologies.get_topology_desc(
      platform='tpu', topology_name=topology
    ).devices
  except Exception as e:  # pylint: disable=broad-except
    # Missing libtpu or an unknown name both surface as a runtime error.
    raise CompileError(
      f'cannot make the TPU topology {topology!r} ({type(e).__name__}: '
      f'{str(e).splitlines()[0] if str(e) else e}). Install the tpu extra '
      "(pip install -e '.[tpu]') and give a topology such as v5e:4x4, "
      'v4:2x2x1 or v5p:2x2x1.'
    ) from e


def gpu_devices(kind: str, count: str):
  if kind not in chips.GPU_TARGETS or not count.isdigit() or int(count) < 1:
    raise CompileError(
      f'unknown GPU target gpu:{kind}:{count}; use gpu:h100:<n> or '
      'gpu:h200:<n> with n GPUs (8 per host).'
    )
  n = int(count)
  per_host = min(n, 8)
  if n % per_host:
    raise CompileError(
      f'gpu:{kind}:{n}: more than 8 GPUs must be whole '
      'hosts of 8 (16, 24, ...).'
    )
  try:
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

    return topologies.get_topology_desc(
      platform='cuda',
      target_config=chips.GPU_TARGETS[kind],
      topology=f'1x{n // per_host}x{per_host}',
    ).devices
  except Exception as e:  # pylint: disable=broad-except
    raise CompileError(
      f'cannot make the GPU topology gpu:{kind}:{n} ({type(e).__name__}: '
      f'{str(e).splitlines()[0] if str(e) else e}). Install the cuda12 '
      "extra (pip install -e '.[cuda12]'); no GPU is needed."
    ) from e


def get_target(spec: str) -> Target:
  """`tpu:<topology>` or `gpu:<h100|h200>:<n>` as compile-only devices."""
  kind, _, rest = spec.partition(':')
  if kind == 'tpu' and rest:
    return Target(spec, 'tpu', tuple(tpu_devices(rest)))
  if kind == 'gpu' and rest.count(':') == 1:
    return Target(spec, 'cuda', tuple(gpu_devices(*rest.split(':'))))
  raise CompileError(
    f'--target={spec} is not a target; use tpu:<topology> '
    '(e.g. tpu:v5e:4x4) or gpu:h100:8 / gpu:h200:8.'
  )


def data_info(config) -> dataset_lib.DatasetInfo:
  """The data set's sizes without reading it: the published splits, or for
  other data roughly 100 training images per class. The class counts are
  constants of the programs and do not change their shapes or cost."""
  d = config.data
  c = int(d.num_classes)
  train, val, test = DATA_SIZES.get(
    d.name, (max(100 * c, config.stage1.batch_size), 0, 30 * c)
  )
  counts = np.full(c, train // c, np.int64)
  counts[: train % c] += 1
  sizes = {'train': train, 'test': test}
  if val:
    sizes['val'] = val
  return dataset_lib.DatasetInfo(
    name=d.name,
    num_classes=c,
    image_shape=(d.image_size, d.image_size, d.channels),
    class_counts=counts,
    split_sizes=sizes,
  )


def with_sharding(tree, shardings):
  """Shapes of `tree` carrying `shardings`: what a placed array would be."""
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
    tree,
    shardings,
  )


def batch_spec(mesh, size: int, image_shape, mask: bool = False) -> dict:
  """The input pipeline's global batch: float32 images (augmented on the
  host or by `data.device_augment` before the step), int32 labels."""
  sharding = parallel.batch_sharding(mesh)
  spec = {
    'image': jax.ShapeDtypeStruct(
      (size, *image_shape), jnp.float32, sharding=sharding
    ),
    'label': jax.ShapeDtypeStruct((size,), jnp.int32, sharding=sharding),
  }
  if mask:
    spec['mask'] = jax.ShapeDtypeStruct((size,), jnp.float32, sharding=sharding)
  return spec


@dataclasses.dataclass
class Program:
  name: str
  fn: object  # a jax.jit-wrapped function
  args: tuple  # its abstract arguments
  images: int  # examples per call, over all devices
  devices: int  # devices the examples are split over


def stage1_state(config, info):
  from lcreg_jax.stages import stage1  # pylint: disable=g-import-not-at-top

  model = network.make_model(config.model, info.num_classes)
  tx = stage1.optimizer(config, info)
  return jax.eval_shape(
    lambda: train_state.create_train_state(
      model, jax.random.key(config.seed), info.image_shape, tx, config.model
    )
  )


def stage1_program(config, info, mesh, state) -> Program:
  from lcreg_jax.stages import stage1  # pylint: disable=g-import-not-at-top

  shardings = parallel.state_sharding(state, mesh, config.shard_covariance)
  b = config.stage1.batch_size
  return Program(
    'stage1',
    stage1.make_step(config, info, mesh, state),
    (with_sharding(state, shardings), batch_spec(mesh, b, info.image_shape)),
    b,
    mesh.size,
  )


def stage2_program(config, info, mesh) -> Program:
  from lcreg_jax.stages import stage2  # pylint: disable=g-import-not-at-top

  model = network.make_model(
    config.model, info.num_classes, lws=config.stage2.method != 'crt'
  )
  # Stage 2 starts from stage 1's values in the fresh model's shapes.
  variables = jax.eval_shape(
    lambda: train_state.init_variables(
      model, jax.random.key(0), info.image_shape
    )
  )
  state = jax.eval_shape(
    lambda v: stage2.make_state(
      config, info, model, v['params'], v['batch_stats']
    ),
    variables,
  )
  b = config.stage2.batch_size
  return Program(
    'stage2',
    stage2.make_step(config, info, mesh, state),
    (
      with_sharding(state, parallel.state_sharding(state, mesh)),
      batch_spec(mesh, b, info.image_shape),
    ),
    b,
    mesh.size,
  )


def eval_program(config, info, mesh, state) -> Program:
  from lcreg_jax.evaluate import predict  # pylint: disable=g-import-not-at-top

  rep = parallel.replicated(mesh)
  b = config.eval.batch_size
  return Program(
    'eval',
    predict.eval_step(state.apply_fn, mesh),
    (
      with_sharding(state.params, jax.tree.map(lambda _: rep, state.params)),
      with_sharding(
        state.batch_stats, jax.tree.map(lambda _: rep, state.batch_stats)
      ),
      batch_spec(mesh, b, info.image_shape, mask=True),
    ),
    b,
    mesh.size,
  )


def dlsa_sizes(config, info) -> tuple[int, int]:
  """(training rows, feature dim) of DLSA's steps: the stage-1 features of
  the training split, less the validation rows carved from it without a
  validation split (`stages.dlsa`)."""
  from lcreg_jax.models import resnet  # pylint: disable=g-import-not-at-top

  rows = info.split_sizes['train']
  if not info.has_split('val'):
    rows -= config.dlsa.val_per_class * info.num_classes
  return max(rows, 1), resnet.feature_dim(config.model.backbone)


def dlsa_programs(config, info, device) -> list[Program]:
  """DLSA's flow, cluster-aided and final classifier steps. They run
  unsharded, on the first device, as `dlsa.run_dlsa` runs them."""
  rows, dim = dlsa_sizes(config, info)
  one = SingleDeviceSharding(device)
  spec = lambda shape, dtype=jnp.float32: jax.ShapeDtypeStruct(
    shape, dtype, sharding=one
  )
  key = jax.eval_shape(lambda: jax.random.PRNGKey(0))
  key = spec(key.shape, key.dtype)
  sizes = dict(c=info.num_classes, rows=rows, dim=dim, one=one, key=key)
  return [
    _dlsa_flow_program(config.dlsa, spec, **sizes),
    *_dlsa_classifier_programs(config.dlsa, spec, **sizes),
  ]


def _dlsa_flow_program(cfg, spec, *, c, rows, dim, one, key) -> Program:
  from lcreg_jax.dlsa import flow_training  # pylint: disable=g-import-not-at-top

  k, n = cfg.num_clusters, spec((), jnp.int32)
  flow = flow_training.make_flow(cfg, dim)
  hp = flow_training.FlowHParams.from_config(cfg, dim)
  tx, step = flow_training.flow_train_fns(flow, hp)
  variables = jax.eval_shape(
    functools.partial(flow.init, train=True),
    jax.random.PRNGKey(0),
    spec((2, dim)),
  )
  train = dict(
    params=variables['params'],
    batch_stats=variables['batch_stats'],
    opt_state=jax.eval_shape(tx.init, variables['params']),
    ema=spec((k,)),
    t=spec(()),
    centers=spec((k, dim)),
  )
  train = with_sharding(train, jax.tree.map(lambda _: one, train))
  labels, counts = spec((rows,), jnp.int32), spec((c,), jnp.int32)
  args = (train, key, spec((rows, dim)), labels, n, spec((rows,)))
  return Program(
    'dlsa_flow', step, (*args, counts, counts, counts, n), hp.batch, 1
  )


def _dlsa_classifier_programs(cfg, spec, *, c, rows, dim, one, key):
  from lcreg_jax.dlsa import classifiers  # pylint: disable=g-import-not-at-top

  k, n = cfg.num_clusters, spec((), jnp.int32)
  chp = classifiers.ClassifierHparams.from_config(cfg)
  # The authors' epochs feed row indices and the real batch size; the
  # former schedule a PRNG key.
  batch = (spec((chp.batch,), jnp.int32), n) if chp.by_epochs else key
  programs = []
  for name, model, inputs in (
    (
      'dlsa_classifier',
      classifiers.ClusterAidedClassifier(c, cfg.classifier_init),
      (spec((rows, dim)), spec((rows, dim + k))),
    ),
    (
      'dlsa_classifier_final',
      classifiers.final_model(cfg, c),
      (spec((rows, dim)),),
    ),
  ):
    tx, step, _ = classifiers.classifier_fns(model, chp)
    params = jax.eval_shape(
      model.init,
      jax.random.PRNGKey(0),
      *(spec((1,) + x.shape[1:]) for x in inputs),
    )
    train = (params, jax.eval_shape(tx.init, params))
    train = with_sharding(train, jax.tree.map(lambda _: one, train))
    args = (train, batch, inputs, spec((rows,), jnp.int32), n, spec((c,)))
    programs.append(Program(name, step, args, chp.batch, 1))
  return programs


def enabled_programs(config) -> tuple[str, ...]:
  """The programs a run of `config` executes."""
  names = []
  if config.stage1.enabled:
    names += ['stage1', 'eval']
  if (
    config.stage2.enabled
    and config.stage2.method not in validate.POSTHOC_METHODS
  ):
    names.append('stage2')
  if config.dlsa.enabled:
    names.append('dlsa')
  return tuple(n for n in PROGRAMS if n in names)


def build_programs(config, info, mesh, names) -> list[Program]:
  """The named programs (of PROGRAMS) of a resolved config, on `mesh`."""
  progs, state = [], None
  if {'stage1', 'eval'} & set(names):
    state = stage1_state(config, info)
  if 'stage1' in names:
    progs.append(stage1_program(config, info, mesh, state))
  if 'stage2' in names:
    progs.append(stage2_program(config, info, mesh))
  if 'eval' in names:
    progs.append(eval_program(config, info, mesh, state))
  if 'dlsa' in names:
    progs += dlsa_programs(config, info, mesh.devices.flat[0])
  return progs


def hlo_cost(lowered) -> dict:
  """XLA's cost analysis of the lowered (global, unpartitioned) program on
  the CPU client: where the target's compiler gives none (GPU)."""
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top

  module = lowered.compiler_ir('hlo').get_hlo_module()
  return _jax.hlo_module_cost_analysis(xla_bridge.get_backend('cpu'), module)


_SHAPE = re.compile(
  r'^\s*(?:ROOT )?%?([\w.\-]+) = (\w+)\[([\d,]*)\]'
  r'(?:\{[^}]*\})? ([\w\-]+)\(([^\n]*)$',
  re.M,
)
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def hlo_buffers(text: str) -> list[tuple[int, str]]:
  """(bytes, 'dtype[shape] (op)') of the array values an HLO text computes
  (not its parameters: `argument_buffers` names those)."""
  found = {}
  for name, dtype, dims, opcode, rest in _SHAPE.findall(text):
    if opcode == 'parameter':
      continue
    size = np.dtype(_NP_DTYPES.get(dtype, 'float32')).itemsize * int(
      np.prod([int(d) for d in dims.split(',') if d] or [1])
    )
    op = _OP_NAME.search(rest)
    label = f'{dtype}[{dims}]'
    if size > found.get(label, (0, ''))[0]:
      found[label] = (size, f'{label} ({op.group(1) if op else name})')
  return list(found.values())


def argument_buffers(args) -> list[tuple[int, str]]:
  """(bytes per device, 'path dtype[shape]') of a program's arguments."""
  out = []
  for path, x in jax.tree_util.tree_flatten_with_path(args)[0]:
    shape = x.sharding.shard_shape(x.shape) if x.sharding else x.shape
    size = int(np.prod(shape)) * np.dtype(x.dtype).itemsize
    name = jax.tree_util.keystr(path, simple=True, separator='.')
    out.append((size, f'argument {name} {np.dtype(x.dtype).name}{list(shape)}'))
  return out


def largest_buffers(buffers, top: int = 3) -> list[str]:
  """The `top` largest of (bytes, label) pairs, as 'label: size'."""
  biggest = sorted(buffers, key=lambda b: -b[0])[:top]
  return [f'{label}: {gib(size):.2f} GiB' for size, label in biggest]


_NP_DTYPES = {
  'f32': 'float32',
  'bf16': 'float16',
  'f16': 'float16',
  's32': 'int32',
  'u32': 'uint32',
  's8': 'int8',
  'u8': 'uint8',
  'pred': 'bool',
  'f64': 'float64',
  's64': 'int64',
}


def gib(n: float) -> float:
  return n / chips.GIB


def batch_bytes_per_device(compiled) -> int:
  """Bytes of one device's shard of the batch (the step's last argument),
  from the compiled program's input shardings."""
  args, _ = compiled.input_shardings
  is_leaf = lambda x: x is None
  leaves = jax.tree.leaves(compiled.args_info[0][-1])
  shardings = jax.tree.leaves(args[-1], is_leaf=is_leaf)
  # An input the program does not read has no sharding and is not sent.
  return int(
    sum(
      np.prod(s.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize
      for a, s in zip(leaves, shardings, strict=True)
      if s is not None
    )
  )


_OOM = (
  re.compile(
    r'Ran out of memory on HBM[^\n]*?\(([\d.]+)([KMGT]?)\)'
    r'[^\n]*?\(([\d.]+)([KMGT]?)\)'
  ),
  re.compile(
    r'memory space hbm\. Used ([\d.]+)([KMGT]?) of '
    r'([\d.]+)([KMGT]?) hbm'
  ),
)
_UNITS = {'': 1, 'K': 1024, 'M': 1024**2, 'G': 1024**3, 'T': 1024**4}


def oom_bytes(message: str) -> tuple[float, float] | None:
  """(needed, available) bytes from the TPU compiler's out-of-memory error,
  which it raises instead of compiling a program that cannot fit."""
  m = _OOM[0].search(message) or _OOM[1].search(message)
  if not m:
    return None
  return (
    float(m.group(1)) * _UNITS[m.group(2)],
    float(m.group(3)) * _UNITS[m.group(4)],
  )


def memory_row(mem) -> dict:
  """Per-device bytes of a compiled program (`memory_analysis()`)."""
  needed = (
    mem.argument_size_in_bytes
    + mem.output_size_in_bytes
    + mem.temp_size_in_bytes
    - mem.alias_size_in_bytes
    + mem.generated_code_size_in_bytes
  )
  return dict(
    argument_bytes=mem.argument_size_in_bytes,
    output_bytes=mem.output_size_in_bytes,
    temp_bytes=mem.temp_size_in_bytes,
    alias_bytes=mem.alias_size_in_bytes,
    code_bytes=mem.generated_code_size_in_bytes,
    hbm_bytes=needed,
  )


def split_arguments(compiled) -> list[str]:
  """The arguments the compiled program splits over devices (the rest are
  replicated), as 'path spec': its partitioning, from its own shardings."""
  args, _ = compiled.input_shardings
  out = []
  for path, s in jax.tree_util.tree_flatten_with_path(args)[0]:
    spec = getattr(s, 'spec', None)
    if spec and any(p is not None for p in spec):
      name = jax.tree_util.keystr(path, simple=True, separator='.')
      out.append(f'{name} {tuple(spec)}')
  return out


def device_capacity(target: Target) -> int:
  """HBM bytes of one device: its chip's, shared by the chip's devices."""
  return target.chip.hbm_bytes // target.devices_per_chip


def try_compile(lowered):
  """(compiled, None), or (None, {row fields}) when the TPU compiler stops
  at its memory check: the temporaries it names are a lower bound of what
  one device needs."""
  try:
    return lowered.compile(), None
  except jax.errors.JaxRuntimeError as e:
    oom = oom_bytes(str(e))
    if oom is None:
      raise
    return None, dict(
      temp_bytes=int(oom[0]),
      hbm_bytes=int(oom[0]),
      compiler_error=str(e).splitlines()[0][:300],
    )


def cost_per_image(compiled, lowered, program: Program) -> dict:
  """FLOPs and bytes accessed per image: of the compiled per-device program
  where the target's compiler counts them (TPU), else of the same lowered
  global program by XLA's CPU cost analysis (GPU)."""
  cost = compiled.cost_analysis() if compiled is not None else None
  if cost and cost.get('flops'):
    source, scale = 'compiled', program.images / program.devices
  else:
    cost, source, scale = hlo_cost(lowered), 'hlo_cpu', program.images
  return dict(
    flops_per_image=cost['flops'] / scale,
    bytes_per_image=cost.get('bytes accessed', 0.0) / scale,
    cost_source=source,
  )


def dump(compiled, name: str, dump_dir: str) -> None:
  """The per-device program as XLA optimised it, to see where bytes go."""
  os.makedirs(dump_dir, exist_ok=True)
  with open(os.path.join(dump_dir, f'{name}.hlo.txt'), 'w') as f:
    f.write(compiled.as_text())


def compile_program(
  program: Program, target: Target, dump_dir: str | None = None
) -> dict:
  """Compiles one program for `target`; its figures as a dict (one row)."""
  t0 = time.time()
  lowered = program.fn.trace(*program.args).lower(
    lowering_platforms=(target.platform,)
  )
  compiled, row = try_compile(lowered)
  row = dict(
    program=program.name,
    target=target.spec,
    device_kind=target.devices[0].device_kind,
    devices=len(target.devices),
    hosts=target.hosts,
    program_devices=program.devices,
    images_per_device=program.images / program.devices,
    compile_s=round(time.time() - t0, 1),
    **(row or {}),
  )
  row.update(cost_per_image(compiled, lowered, program))
  if compiled is not None:
    if dump_dir:
      dump(compiled, program.name, dump_dir)
    row.update(
      memory_row(compiled.memory_analysis()),
      batch_bytes_per_device=batch_bytes_per_device(compiled),
      split_arguments=split_arguments(compiled),
    )
  capacity = device_capacity(target)
  row.update(
    capacity_bytes=capacity,
    headroom_bytes=capacity - row['hbm_bytes'],
    fits=row['hbm_bytes'] <= capacity and compiled is not None,
  )
  if not row['fits']:
    # Per-device values where compiled; else those of the global program.
    values = (
      hlo_buffers(compiled.as_text())
      if compiled is not None
      else [
        (n, f'{label}, global')
        for n, label in hlo_buffers(lowered.compiler_ir('hlo').as_hlo_text())
      ]
    )
    row['largest_buffers'] = largest_buffers(
      values + argument_buffers(program.args)
    )
  return row


def roofline(row: dict, chip: chips.Chip, dtype: str) -> dict:
  """Images/s per chip: the slower of compute and HBM traffic at peak."""
  compute = chip.peak_flops[dtype] / max(row['flops_per_image'], 1.0)
  memory = (
    chip.hbm_bytes_per_s / row['bytes_per_image']
    if row['bytes_per_image']
    else float('inf')
  )
  return dict(
    images_per_s_per_chip=min(compute, memory),
    bound='compute' if compute <= memory else 'memory',
    peak_flops=chip.peak_flops[dtype],
    hbm_bytes_per_s=chip.hbm_bytes_per_s,
  )


def advice(config, row: dict, devices: int) -> list[str]:
  """The switches that lower a program's memory, most effective first."""
  tips = []
  latent = config.model.latent
  stage1 = row['program'] == 'stage1'
  if config.model.dtype == 'float32' and not row['program'].startswith('dlsa'):
    tips.append('--config.model.dtype=bfloat16 (activations in half the bytes)')
  if stage1 and latent.enabled and latent.covariance == 'full':
    tips.append(
      '--config.model.latent.covariance=diagonal (M x D instead '
      'of M x D x D moments)'
    )
    if not config.shard_covariance:
      m = latent.num_latents
      if m % devices:
        tips.append(nearest_m_text(m, devices))
      else:
        tips.append(
          f'--config.shard_covariance=True (each device keeps '
          f'{m // devices} of the {m} covariances)'
        )
  per = row['images_per_device']
  if row['program_devices'] > 1 and per > 1:
    key = {'stage1': 'stage1', 'stage2': 'stage2', 'eval': 'eval'}.get(
      row['program']
    )
    if key:
      smaller = max(devices, int(per // 2) * devices)
      tips.append(
        f'a smaller batch per chip: --config.{key}.batch_size='
        f'{smaller} ({smaller // devices} per device instead of '
        f'{per:g}), or more chips'
      )
  return tips


def nearest_m_text(m: int, devices: int) -> str:
  """Why M latents cannot be split over `devices`, and the nearest M that
  can."""
  low, high = m // devices * devices, -(-m // devices) * devices
  near = [v for v in (low, high) if v > 0]
  best = min(near, key=lambda v: (abs(v - m), v))
  which = (
    f'the nearer of {low} or {high}'
    if len(near) > 1
    else f'the smallest multiple of {devices}'
  )
  return (
    f'M = {m} latents do not split evenly over {devices} devices '
    f'(JAX shards evenly only): --config.model.latent.num_latents='
    f'{best} ({which}) with --config.shard_covariance=True'
  )


def layout_notes(config, devices: int) -> list[str]:
  """How the latent moments are laid out on this target, and why."""
  latent = config.model.latent
  if not latent.enabled:
    return []
  m = latent.num_latents
  if config.shard_covariance:
    return [f'latent moments split along M: {m // devices} of {m} per device']
  if latent.covariance == 'full' and devices > 1:
    return [
      'full latent covariance replicated on every device'
      + (
        f'; {nearest_m_text(m, devices)}'
        if m % devices
        else '; --config.shard_covariance=True would split it'
      )
    ]
  return []


def run(
  config, target: Target, names, dump_dir: str | None = None
) -> list[dict]:
  """Compiles `names` for `target`; one row per program, in order.
  `dump_dir`: where to write each compiled program's HLO text."""
  mesh = parallel.make_mesh(config.num_devices, target.devices)
  info = data_info(config)
  rows = []
  for program in build_programs(config, info, mesh, names):
    row = compile_program(program, target, dump_dir)
    row.update(roofline(row, target.chip, config.model.dtype))
    row['notes'] = (
      layout_notes(config, mesh.size) if (program.name == 'stage1') else []
    )
    if not row['fits']:
      row['advice'] = advice(config, row, mesh.size)
    rows.append(row)
  return rows


def format_row(row: dict) -> str:
  fit = 'fits' if row['fits'] else 'DOES NOT FIT'
  return (
    f'{row["program"]:<22} {fit:<12} HBM/device '
    f'{gib(row["hbm_bytes"]):.3g} of {gib(row["capacity_bytes"]):.3g}'
    f' GiB (headroom {gib(row["headroom_bytes"]):.3g})  '
    f'{row["flops_per_image"] / 1e9:.3g} GFLOP/image  '
    f'~{row["images_per_s_per_chip"]:.3g} images/s/chip '
    f'({row["bound"]}-bound)  compiled in {row["compile_s"]:.0f} s'
  )


def not_fitting_message(rows: list[dict]) -> str:
  parts = []
  for r in rows:
    if r['fits']:
      continue
    least = 'at least ' if 'compiler_error' in r else ''
    parts.append(
      f'{r["program"]} needs {least}{gib(r["hbm_bytes"]):.2f} GiB per '
      f'device on '
      f'{r["target"]} ({r["device_kind"]}, {gib(r["capacity_bytes"]):.2f} '
      f'GiB per device) and does not fit; its largest buffers: '
      f'{"; ".join(r["largest_buffers"]) or "n/a"}. What helps: '
      f'{"; ".join(r.get("advice", [])) or "more memory per device"}'
    )
  return (
    '. '.join(parts) + '. Nothing was run; change the config and compile again.'
  )


FLAGS = flags.FLAGS
flags.DEFINE_string(
  'target',
  None,
  'tpu:<topology> (e.g. tpu:v5e:4x4) or gpu:h100:<n> / gpu:h200:<n>.',
)
flags.DEFINE_bool('json', False, 'One JSON object per program and line.')
flags.DEFINE_string(
  'dump_hlo',
  None,
  'A directory to write each compiled '
  'program to, as optimised HLO text (<program>.hlo.txt).',
)
flags.DEFINE_list(
  'programs',
  None,
  'Programs to compile (of '
  f'{",".join(PROGRAMS)}); default: those the config runs.',
)


def main(argv):
  del argv  # checked by parse_flags
  try:
    if not FLAGS.target:
      raise CompileError(f'--target is required. Usage: {USAGE}')
    names = tuple(FLAGS.programs or ())
    unknown = [n for n in names if n not in PROGRAMS]
    if unknown:
      raise CompileError(
        f'unknown --programs {",".join(unknown)}; choose '
        f'from {",".join(PROGRAMS)}.'
      )
    target = get_target(FLAGS.target)
    config = config_lib.resolve_and_validate(FLAGS.config, len(target.devices))
    rows = run(
      config, target, names or enabled_programs(config), FLAGS.dump_hlo
    )
  except errors.UserError as e:
    main_lib.fail(str(e), code=1)
  for row in rows:
    print(json.dumps(row) if FLAGS.json else format_row(row), flush=True)
  if not all(r['fits'] for r in rows):
    main_lib.fail(not_fitting_message(rows), code=1)


def cli():
  cli_lib.run(
    main, flags_parser=functools.partial(main_lib.parse_flags, usage=USAGE)
  )


if __name__ == '__main__':
  cli()
