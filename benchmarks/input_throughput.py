"""Training input throughput: our streaming tf.data pipeline vs MiSLAS's PyTorch
DataLoader, on the same JPEG files, with the same number of workers, in one run.

  python benchmarks/input_throughput.py --torch_python=/tmp/torch_ref/bin/python

The reference needs a Python environment with torch and torchvision, made
outside the repository (torch is no dependency of lcreg_jax), e.g.

  python3 -m venv /tmp/torch_ref
  /tmp/torch_ref/bin/pip install torch==2.14.1 torchvision==0.29.1 pillow
  # on aarch64 (`uname -m`), or if those are not available:
  /tmp/torch_ref/bin/pip install torch==2.9.1 torchvision==0.24.1 pillow

Without --torch_python (or with one that cannot import torch and torchvision)
only ours is measured, and the output says how to make that environment.

What is timed, per image, in both: read the file, decode, random-resized crop
to 224, horizontal flip, colour jitter (brightness, contrast, saturation 0.4),
normalise with the ImageNet mean/std, batched by --batch_size (256):

  ours: `streaming.make_train_iterator` with the example function of a
    `FileDataset` (data.source='list', data.augment='imagenet', i.e.
    `imagenet_augment.TrainAugment`: random parameters drawn per batch in
    NumPy, the uint8 crop per example on the host, JPEGs decoded only inside
    the crop window; then flip, jitter and normalisation of the global batch,
    jitted, on the JAX device — on this benchmark's CPU-only machines the same
    CPU), delivering global jax.Arrays on a 1-device mesh; tf.data on a
    private pool of --workers threads, each op single-threaded (`threads=` of
    make_train_iterator).
  ours, host part: the same without the device part (uint8 crops), i.e. the
    CPU work per image left to the host of a GPU/TPU machine.
  reference: benchmarks/torch_reference_loader.py, run with --torch_python in
    a subprocess: a Dataset opening files with PIL, torchvision's
    RandomResizedCrop, RandomHorizontalFlip, ColorJitter, ToTensor, Normalize,
    DataLoader(shuffle=True, num_workers=--workers, pin_memory=False).

--images JPEGs are generated once into --dir (kept and reused by later runs
with the same --dir): half 500x375, half 375x500 (the common ImageNet sizes),
smooth random colour fields at three scales plus pixel noise, Pillow quality
90 (about 100 KB a file; ImageNet's average is ~110 KB). Each loader's data
set cycles through them for (warmup + batches) * batch_size samples, so that
the timed batches lie inside one epoch, as in a long epoch of a real data set;
files are read from the page cache after their first pass, for both alike.

--rounds (3) rounds each time ours, then the reference, so that a busy phase
of a shared machine hits both alike. Printed: each round's images/s, then,
as medians over the rounds, images/s over the timed batches (after --warmup
untimed ones), the
same per core (divided by min(workers, CPUs)), images per CPU-second (CPU time
of all threads/processes of the loader over the timed batches), the peak RSS
of each process (VmHWM on Linux, else getrusage maxrss; for the reference's
workers, the largest one's getrusage maxrss), the ratio ours/reference, and
the machine.
"""

import datetime
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
from PIL import Image

from lcreg_jax import cli  # --help exits 0

flags.DEFINE_integer(
  'images', 512, 'JPEG files to generate (or reuse) in --dir.'
)
flags.DEFINE_string(
  'dir',
  os.path.join(tempfile.gettempdir(), 'lcreg_jax_input_throughput'),
  'Folder of the generated images and list file; reused if present.',
)
flags.DEFINE_integer(
  'workers',
  os.cpu_count(),
  'tf.data threads (ours) and DataLoader worker processes (reference).',
)
flags.DEFINE_integer('batch_size', 256, 'Images per batch.')
flags.DEFINE_integer(
  'batches',
  20,
  'Timed batches: a multiple of --workers, and many more '
  'than 2 x --workers (the DataLoader\'s workers each build whole '
  'batches, up to 2 ahead), or the rates mean little.',
)
flags.DEFINE_integer('warmup', 4, 'Untimed batches before the timed ones.')
flags.DEFINE_integer(
  'rounds',
  3,
  'Rounds, each timing ours then the reference; the summary gives the medians.',
)
flags.DEFINE_string(
  'torch_python',
  '',
  'Python of an environment with torch and '
  'torchvision for the reference; empty: measure only ours.',
)
flags.DEFINE_integer('seed', 0, 'Seed of the images and of both loaders.')
FLAGS = flags.FLAGS

NUM_CLASSES = 10
SIZES = ((500, 375), (375, 500))  # (width, height), alternating
REFERENCE = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), 'torch_reference_loader.py'
)
MAKE_REFERENCE_ENV = (
  'python3 -m venv /tmp/torch_ref && /tmp/torch_ref/bin/pip install torch==2.14.1 '
  'torchvision==0.29.1 pillow (on aarch64, or if those are not available: torch==2.9.1 '
  'torchvision==0.24.1), then pass --torch_python=/tmp/torch_ref/bin/python'
)


def photo(seed: int, index: int) -> np.ndarray:
  """A photo-like uint8 image: colour fields at three scales, bicubic, plus noise."""
  rng = np.random.default_rng([seed, index])
  w, h = SIZES[index % 2]
  out = np.full((h, w, 3), 128.0, np.float32)
  for step, amplitude in ((40, 1.0), (10, 0.35), (3, 0.25)):
    small = rng.uniform(-128, 128, (h // step + 2, w // step + 2, 3)).astype(
      np.float32
    )
    out += amplitude * np.stack(
      [
        np.asarray(
          Image.fromarray(small[..., c], 'F').resize((w, h), Image.BICUBIC)
        )
        for c in range(3)
      ],
      axis=-1,
    )
  out += rng.normal(0.0, 14.0, out.shape)
  return np.clip(out, 0, 255).astype(np.uint8)


def write_images(folder: str, n: int, seed: int) -> tuple[str, float]:
  """Generates (or reuses) n JPEGs and a list file; returns (list path, mean KiB)."""
  os.makedirs(os.path.join(folder, 'images'), exist_ok=True)
  lines, sizes = [], []
  for i in range(n):
    rel = os.path.join('images', f'{seed}_{i:06d}.jpg')
    path = os.path.join(folder, rel)
    if not os.path.isfile(path) or not os.path.getsize(path):
      tmp = f'{path}.{os.getpid()}.tmp'
      Image.fromarray(photo(seed, i)).save(tmp, format='JPEG', quality=90)
      os.replace(tmp, path)
    sizes.append(os.path.getsize(path))
    lines.append(f'{rel} {i % NUM_CLASSES}')
  list_path = os.path.join(folder, f'train_{seed}_{n}.txt')
  with open(f'{list_path}.{os.getpid()}.tmp', 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')
  os.replace(f'{list_path}.{os.getpid()}.tmp', list_path)
  return list_path, float(np.mean(sizes)) / 1024


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def peak_rss_mib() -> float:
  """This process's peak RSS, MiB: VmHWM on Linux, else getrusage's maxrss.

  getrusage's maxrss of a process started by subprocess (vfork + exec) starts at
  its parent's peak (e.g. a test runner's), VmHWM only counts this process.
  """
  try:
    with open('/proc/self/status', encoding='ascii') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) / 1024
  except (OSError, ValueError, IndexError):
    pass
  # ru_maxrss is in KiB on Linux, in bytes on macOS.
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return rss / (2**20 if sys.platform == 'darwin' else 1024)


class _HostPart:
  """Our training augmentation without its accelerator part (`finish`: flip,
  jitter, normalisation): the work the host of a GPU/TPU machine does."""

  def __init__(self, augment):
    self._augment = augment

  def params(self, seed, positions):
    return self._augment.params(seed, positions)

  def example(self, tf, encoded, params):
    return self._augment.example(tf, encoded, params)


def run_ours(folder: str, list_path: str, host_only: bool = False) -> dict:
  """Our pipeline in this process: images/s over the timed batches, CPU, memory.

  host_only: batches of uint8 crops, without the flip, jitter and normalisation
  that otherwise run, jitted, on the JAX device (here the same CPU).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from lcreg_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from lcreg_jax import parallel  # pylint: disable=g-import-not-at-top
  from lcreg_jax.data import dataset  # pylint: disable=g-import-not-at-top
  from lcreg_jax.data import streaming  # pylint: disable=g-import-not-at-top

  batch, warmup, timed = FLAGS.batch_size, FLAGS.warmup, FLAGS.batches
  cfg = config_lib.base_config().data
  cfg.update(
    source='list',
    augment='imagenet',
    image_size=224,
    channels=3,
    imbalance_factor=1.0,
    num_classes=NUM_CLASSES,
    image_root=folder,
    train_list=list_path,
    test_list=list_path,
  )
  data = dataset.load(cfg)
  split = data._splits['train']  # pylint: disable=protected-access
  # As FileDataset.train_batches, with the thread limit it does not expose and a data
  # set cycling through the files for exactly the samples consumed (one epoch).
  samples = (warmup + timed) * batch
  sharding = parallel.batch_sharding(parallel.make_mesh(1))
  augment = data._train_fn(batch)  # pylint: disable=protected-access
  batches = streaming.make_train_iterator(
    split.reader.subset(np.resize(np.arange(len(split.labels)), samples)),
    np.resize(split.labels, samples),
    global_batch_size=batch,
    sharding=sharding,
    seed=FLAGS.seed,
    start_step=0,
    example_fn=(_HostPart(augment) if host_only else augment),
    on_bad_image=cfg.on_bad_image,
    where=split.where,
    threads=FLAGS.workers,
  )
  start = time.perf_counter()
  t0, cpu0 = start, time.process_time()
  for step in range(warmup + timed):
    b = jax.block_until_ready(next(batches))
    if step == 0:
      first = time.perf_counter() - start
    if step == warmup - 1:
      t0, cpu0 = time.perf_counter(), time.process_time()
  seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
  assert b['image'].shape == (batch, 224, 224, 3), b['image'].shape
  batches.close()  # ends this epoch's tf.data iterator, so that its threads stop
  del batches, b
  gc.collect()
  return {
    'loader': 'ours',
    'images_per_s': timed * batch / seconds,
    'seconds': seconds,
    'first_batch_s': first,
    'images_per_cpu_s': timed * batch / cpu if cpu else None,
    'maxrss_mib': peak_rss_mib(),
    'samples': samples,
    'versions': f'TensorFlow {_tf_version()}, JAX {jax.__version__} on '
    f'{jax.devices()[0].platform}',
  }


def _tf_version() -> str:
  from lcreg_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  return pipeline.import_tf().__version__


def reference_python_problem(python: str) -> str | None:
  """Why `python` cannot run the reference, or None if it can."""
  if not python:
    return '--torch_python not given'
  try:
    res = subprocess.run(
      [python, '-c', 'import torch, torchvision, PIL'],
      capture_output=True,
      text=True,
      timeout=300,
    )
  except (OSError, subprocess.SubprocessError) as e:
    return f'cannot run --torch_python={python} ({e})'
  if res.returncode:
    last = (res.stderr.strip().splitlines() or ['no message'])[-1]
    return (
      f'--torch_python={python} cannot import torch and torchvision ({last})'
    )
  return None


def run_reference(folder: str, list_path: str) -> dict:
  """benchmarks/torch_reference_loader.py in the --torch_python environment."""
  cmd = [
    FLAGS.torch_python,
    REFERENCE,
    f'--list={list_path}',
    f'--root={folder}',
    f'--workers={FLAGS.workers}',
    f'--batch_size={FLAGS.batch_size}',
    f'--batches={FLAGS.batches}',
    f'--warmup={FLAGS.warmup}',
    f'--seed={FLAGS.seed}',
  ]
  res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
  if res.returncode:
    raise RuntimeError(
      f'the reference loader failed ({" ".join(cmd)}):\n{res.stderr[-3000:]}'
    )
  return json.loads(res.stdout.strip().splitlines()[-1])


def _plural(n: int, word: str) -> str:
  return f'{n} {word}{"" if n == 1 else "s"}'


def _summary(runs: list[dict]) -> dict:
  """Medians over rounds of the rates, the largest memory, the spread of images/s."""
  med = lambda key: (
    float(np.median([r[key] for r in runs]))
    if all(r.get(key) for r in runs)
    else None
  )
  rates = [r['images_per_s'] for r in runs]
  out = dict(
    runs[-1],
    images_per_s=med('images_per_s'),
    images_per_cpu_s=med('images_per_cpu_s'),
    first_batch_s=med('first_batch_s'),
    spread=(min(rates), max(rates)),
  )
  for key in ('maxrss_mib', 'maxrss_main_mib', 'maxrss_worker_mib'):
    if key in runs[0]:
      out[key] = max(r[key] for r in runs)
  return out


def main(argv):
  del argv
  if (
    min(
      FLAGS.images, FLAGS.workers, FLAGS.batch_size, FLAGS.batches, FLAGS.rounds
    )
    < 1
    or FLAGS.warmup < 0
  ):
    raise app.UsageError(
      '--images, --workers, --batch_size, --batches, --rounds must be '
      '>= 1 and --warmup >= 0.'
    )
  cpus = os.cpu_count()
  cores = min(FLAGS.workers, cpus)
  affinity = (
    len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else cpus
  )
  print(
    f'machine: {cpus} CPUs ({affinity} usable), {cpu_model()}, {platform.machine()}, '
    f'Python {platform.python_version()}, '
    f'{datetime.datetime.now().astimezone().isoformat(timespec="seconds")}, load average '
    f'{os.getloadavg()[0]:.2f}'
  )
  t = time.perf_counter()
  list_path, kib = write_images(FLAGS.dir, FLAGS.images, FLAGS.seed)
  print(
    f'data: {FLAGS.images} JPEGs ({"x".join(map(str, SIZES[0]))} and '
    f'{"x".join(map(str, SIZES[1]))}, quality 90, mean {kib:.0f} KiB) in {FLAGS.dir} '
    f'({time.perf_counter() - t:.1f} s); batch {FLAGS.batch_size}, {FLAGS.warmup} '
    f'warm-up + {FLAGS.batches} timed batches, {_plural(FLAGS.workers, "worker")}, '
    f'{_plural(FLAGS.rounds, "round")}; per core = / {cores}'
  )
  sys.stdout.flush()
  problem = reference_python_problem(FLAGS.torch_python)

  # Alternate the two loaders over the rounds, so that a busy phase of a shared machine
  # hits both alike; the summary takes medians.
  ours_runs, host_runs, ref_runs = [], [], []
  for k in range(FLAGS.rounds):
    ours_runs.append(run_ours(FLAGS.dir, list_path))
    host_runs.append(run_ours(FLAGS.dir, list_path, host_only=True))
    text = (
      f'round {k + 1}: ours {ours_runs[-1]["images_per_s"]:.1f} images/s, host part '
      f'{host_runs[-1]["images_per_s"]:.1f}'
    )
    if not problem:
      ref_runs.append(run_reference(FLAGS.dir, list_path))
      text += f', reference {ref_runs[-1]["images_per_s"]:.1f} images/s'
    print(f'{text} (load average {os.getloadavg()[0]:.2f})')
    sys.stdout.flush()

  def line(name, r, memory):
    per_cpu = r.get('images_per_cpu_s')
    per_cpu = f'{per_cpu:.1f}' if per_cpu else 'n/a'
    spread = (
      f' (median of {FLAGS.rounds} rounds, {r["spread"][0]:.1f}-{r["spread"][1]:.1f})'
      if FLAGS.rounds > 1
      else ''
    )
    print(
      f'{name}: {r["images_per_s"]:.1f} images/s{spread}, '
      f'{r["images_per_s"] / cores:.1f} images/s per core, {per_cpu} images per '
      f'CPU-second, first batch after {r["first_batch_s"]:.1f} s, {memory}'
    )

  ours = _summary(ours_runs)
  host = _summary(host_runs)
  line(
    f'ours (tf.data, {_plural(FLAGS.workers, "thread")}, and the jitted flip, jitter and '
    f'normalisation on the JAX device; {ours["versions"]})',
    ours,
    f'peak RSS {ours["maxrss_mib"]:.0f} MiB (TF + JAX process)',
  )
  line(
    'ours, host part only (uint8 crops: what the host of a GPU/TPU machine computes)',
    host,
    f'peak RSS {host["maxrss_mib"]:.0f} MiB',
  )
  if problem:
    print(
      f'reference not measured: {problem}. To measure it, create its environment '
      f'outside the repository: {MAKE_REFERENCE_ENV}.'
    )
    return
  ref = _summary(ref_runs)
  line(
    f'reference (torch DataLoader, {_plural(ref["workers"], "worker")}; torch '
    f'{ref["torch"]}, torchvision {ref["torchvision"]}, Pillow {ref["pillow"]}'
    f'{"" if ref["libjpeg_turbo"] else " without libjpeg-turbo"})',
    ref,
    f'peak RSS main {ref["maxrss_main_mib"]:.0f} MiB, largest worker '
    f'{ref["maxrss_worker_mib"]:.0f} MiB',
  )
  for name, r in (('ours', ours), ('ours host part', host)):
    if r['images_per_cpu_s'] and ref['images_per_cpu_s']:
      print(
        f'ratio {name}/reference images per CPU-second: '
        f'{r["images_per_cpu_s"] / ref["images_per_cpu_s"]:.2f}'
      )
    print(
      f'ratio {name}/reference images/s per core: '
      f'{r["images_per_s"] / ref["images_per_s"]:.2f}'
    )


if __name__ == '__main__':
  cli.run(main)
