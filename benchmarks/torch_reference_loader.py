"""The loader lcreg_jax's input pipeline is compared with: MiSLAS's ImageNet
training input in PyTorch, timed on a list file.

Standalone (no lcreg_jax import), for a Python environment with torch,
torchvision and Pillow; benchmarks/input_throughput.py runs it in a
subprocess. By hand:

  /tmp/torch_ref/bin/python benchmarks/torch_reference_loader.py \
      --list=DIR/train.txt --root=DIR --workers=2 --batches=20 --warmup=4

A `Dataset` opening each file with PIL (`Image.open(path).convert('RGB')`),
MiSLAS's transform (RandomResizedCrop(224), RandomHorizontalFlip,
ColorJitter(0.4, 0.4, 0.4, 0), ToTensor, Normalize(ImageNet mean/std)), a
`DataLoader(batch_size, shuffle=True, num_workers=W, pin_memory=False)`.
The data set has `--samples` entries (default (warmup + batches) * batch
size), cycling through the listed files, so that the timed batches lie in
one epoch, as in a long epoch of a real data set (no worker restart).

Prints one JSON line: images/s over the timed batches (from the arrival of
the last warm-up batch to that of the last timed one), images per CPU-second
over them (this process's CPU time plus its workers', from /proc), the peak
RSS of the main process (VmHWM on Linux, else getrusage maxrss) and of the
largest worker (getrusage maxrss of the reaped workers; it counts the pages a
worker shares with the main process too), MiB, and versions.
"""

import argparse
import json
import os
import resource
import sys
import time

import PIL
from PIL import features
from PIL import Image
import torch
from torch.utils import data
import torchvision
from torchvision import transforms


class ListDataset(data.Dataset):
  """`relative/path label` lines; `length` samples cycling through them."""

  def __init__(self, list_path, root, length, transform):
    with open(list_path, encoding='utf-8') as f:
      rows = [
        line.rsplit(maxsplit=1)
        for line in f.read().splitlines()
        if line.strip()
      ]
    self.paths = [os.path.join(root, path) for path, _ in rows]
    self.labels = [int(label) for _, label in rows]
    self.length = length or len(rows)
    self.transform = transform

  def __len__(self):
    return self.length

  def __getitem__(self, index):
    index %= len(self.paths)
    image = Image.open(self.paths[index]).convert('RGB')
    return self.transform(image), self.labels[index]


def mislas_train_transform(size=224):
  return transforms.Compose(
    [
      transforms.RandomResizedCrop(size),
      transforms.RandomHorizontalFlip(),
      transforms.ColorJitter(
        brightness=0.4, contrast=0.4, saturation=0.4, hue=0
      ),
      transforms.ToTensor(),
      transforms.Normalize(
        mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]
      ),
    ]
  )


def _peak_rss_mib(who=resource.RUSAGE_SELF):
  """Peak RSS, MiB: getrusage's maxrss, except for this process on Linux, VmHWM.

  A process started by subprocess (vfork + exec) gets its parent's maxrss as its
  own starting value, so getrusage would report the parent's peak if larger;
  VmHWM counts only this process's memory. Forked workers have no such carry-over.
  """
  if who == resource.RUSAGE_SELF:
    try:
      with open('/proc/self/status', encoding='ascii') as f:
        for line in f:
          if line.startswith('VmHWM:'):
            return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
      pass
  # ru_maxrss is in KiB on Linux, in bytes on macOS.
  return resource.getrusage(who).ru_maxrss / (
    2**20 if sys.platform == 'darwin' else 1024
  )


def _cpu_seconds(pids):
  """User + system CPU seconds of processes `pids` so far (Linux /proc), or None."""
  total = 0.0
  try:
    for pid in pids:
      with open(f'/proc/{pid}/stat', encoding='ascii') as f:
        fields = f.read().rpartition(')')[2].split()
      total += (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
  except (OSError, ValueError, IndexError):
    return None
  return total


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument(
    '--list', required=True, help='list file of "relative/path label"'
  )
  parser.add_argument(
    '--root', required=True, help='folder the list paths start from'
  )
  parser.add_argument('--workers', type=int, default=os.cpu_count())
  parser.add_argument('--batch_size', type=int, default=256)
  parser.add_argument('--batches', type=int, default=20, help='timed batches')
  parser.add_argument(
    '--warmup', type=int, default=4, help='untimed batches first'
  )
  parser.add_argument(
    '--samples',
    type=int,
    default=0,
    help='data set length; 0 = (warmup + batches) * batch_size',
  )
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)

  torch.manual_seed(args.seed)
  samples = args.samples or (args.warmup + args.batches) * args.batch_size
  dataset = ListDataset(args.list, args.root, samples, mislas_train_transform())
  loader = data.DataLoader(
    dataset,
    batch_size=args.batch_size,
    shuffle=True,
    num_workers=args.workers,
    pin_memory=False,
  )
  start = time.perf_counter()
  it = iter(loader)
  # CPU time over the timed batches: this process and the workers (which exist from here on).
  pids = [w.pid for w in getattr(it, '_workers', [])]
  cpu = lambda: (time.process_time(), _cpu_seconds(pids))
  t0, cpu0 = start, cpu()
  for step in range(args.warmup + args.batches):
    images, labels = next(it)
    if step == 0:
      first = time.perf_counter() - start
    if step == args.warmup - 1:
      t0, cpu0 = time.perf_counter(), cpu()
  seconds, cpu1 = time.perf_counter() - t0, cpu()
  used = (
    None
    if cpu1[1] is None or cpu0[1] is None
    else (cpu1[0] - cpu0[0] + cpu1[1] - cpu0[1])
  )
  assert (
    images.shape == (args.batch_size, 3, 224, 224)
    and images.dtype == torch.float32
  )
  del (
    it,
    loader,
  )  # workers exit and are reaped: RUSAGE_CHILDREN then covers them
  print(
    json.dumps(
      {
        'loader': 'torch',
        'images_per_s': args.batches * args.batch_size / seconds,
        'seconds': seconds,
        'first_batch_s': first,
        'images_per_cpu_s': args.batches * args.batch_size / used
        if used
        else None,
        'batches': args.batches,
        'warmup': args.warmup,
        'batch_size': args.batch_size,
        'workers': args.workers,
        'samples': samples,
        'files': len(dataset.paths),
        'maxrss_main_mib': _peak_rss_mib(),
        'maxrss_worker_mib': _peak_rss_mib(resource.RUSAGE_CHILDREN),
        'torch': torch.__version__,
        'torchvision': torchvision.__version__,
        'pillow': PIL.__version__,
        'libjpeg_turbo': bool(features.check_feature('libjpeg_turbo')),
        'torch_threads_main': torch.get_num_threads(),
      }
    ),
    flush=True,
  )


if __name__ == '__main__':
  main()
