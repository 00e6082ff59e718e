"""List files, the format every long-tailed benchmark ships (OLTR's
ImageNet-LT and Places-LT lists, the iNaturalist 2018 lists): one
`relative/path label` per line, paths relative to an image root.

Only paths and labels are held in memory; the images are read as they
stream. Everything that can be checked cheaply is checked here, before any
training: the list's syntax, the labels' range, and (optionally) that every
image file exists. Each problem names the list file and the line.
"""

import dataclasses
import os

import numpy as np

from lcreg_jax.errors import DataError

# How many offending lines a message quotes before it only counts them.
_QUOTE = 5


@dataclasses.dataclass(frozen=True)
class ListSplit:
  paths: np.ndarray  # (N,) str, image paths (image root joined)
  labels: np.ndarray  # (N,) int32
  list_path: str  # where the split came from, for messages


def _quote(problems: list[str]) -> str:
  shown = '; '.join(problems[:_QUOTE])
  more = len(problems) - _QUOTE
  return shown + (f'; and {more} more' if more > 0 else '')


def read_list(
  list_path: str, image_root: str, num_classes: int, *, check_files: bool = True
) -> ListSplit:
  """Parses a list file; raises DataError naming every bad line (quoted).

  Args:
    list_path: the list file.
    image_root: the folder the list's relative paths start from.
    num_classes: labels must lie in [0, num_classes).
    check_files: also check that every image file exists (one stat per
      line: seconds for ImageNet-LT on a local disk).
  """
  if not os.path.isfile(list_path):
    raise DataError(
      f'list file {list_path} does not exist. Point --config.data.'
      'train_list / val_list / test_list at the list files (ImageNet-LT, '
      'Places-LT and iNaturalist 2018 lists: "relative/path label" per '
      'line, as distributed with OLTR and MiSLAS).'
    )
  try:
    with open(list_path, encoding='utf-8') as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(
      f'cannot read list file {list_path} ({e}); replace it with a fresh copy.'
    ) from e
  paths, labels, numbers, bad = [], [], [], []
  for number, line in enumerate(lines, start=1):
    text = line.strip()
    if not text:
      continue
    parts = text.rsplit(maxsplit=1)
    if len(parts) != 2:
      bad.append(f'line {number} "{text[:80]}" has no label')
      continue
    try:
      label = int(parts[1])
    except ValueError:
      bad.append(f'line {number} "{text[:80]}" has no integer label')
      continue
    if not 0 <= label < num_classes:
      bad.append(f'line {number} has label {label}, outside [0, {num_classes})')
      continue
    paths.append(os.path.join(image_root, parts[0]))
    labels.append(label)
    numbers.append(number)
  if bad:
    raise DataError(
      f'{len(bad)} bad line{"s" if len(bad) > 1 else ""} in list file '
      f'{list_path}: {_quote(bad)}. Each line must be "relative/path '
      'label" with 0 <= label < --config.data.num_classes; fix the file or '
      'the class count.'
    )
  if not paths:
    raise DataError(
      f'list file {list_path} lists no images; point the '
      'config at the right file.'
    )
  if check_files:
    missing = [
      f'{p} (line {n})' for p, n in zip(paths, numbers) if not os.path.isfile(p)
    ]
    if missing:
      raise DataError(
        f'{len(missing)} image{"s" if len(missing) > 1 else ""} of list '
        f'file {list_path} not found under --config.data.image_root='
        f'{image_root}: {_quote(missing)}. Fix image_root (the folder the '
        'list\'s paths start from) or the files; set '
        '--config.data.check_files=False to skip this check.'
      )
  return ListSplit(
    paths=np.asarray(paths, dtype=object).astype(str),
    labels=np.asarray(labels, np.int32),
    list_path=list_path,
  )
