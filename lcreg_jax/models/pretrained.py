"""Import torchvision ResNet weights (e.g. ImageNet ResNet-50/152) into the
flax ResNet backbone of `lcreg_jax.models.resnet`.

The naming rule (flax path under the backbone -> torchvision state-dict name):

  Conv_0, BatchNorm_0 (the stem)      -> conv1, bn1
  stage{i}_block{j}/Conv_{k}          -> layer{i}.{j-1}.conv{k+1}
  stage{i}_block{j}/BatchNorm_{k}     -> layer{i}.{j-1}.bn{k+1}
  stage{i}_block{j}/shortcut_conv     -> layer{i}.{j-1}.downsample.0
  stage{i}_block{j}/shortcut_bn       -> layer{i}.{j-1}.downsample.1

with the leaves params kernel/scale -> weight, params bias -> bias,
batch_stats mean -> running_mean and batch_stats var -> running_var. Conv
kernels are transposed from torch's OIHW to flax's HWIO. Both use BN eps 1e-5
and ResNet v1.5 (the stride on the 3×3 conv), so the imported backbone
computes what the torchvision one does. The classifier `fc.*` and the BN
counters `num_batches_tracked` are never imported.

Files: .safetensors (read with NumPy only), .npz, and .pth/.pt when torch is
installed (it is not a dependency).
"""

import json
import math
import os
import re
from typing import Any, Iterable, Mapping, Sequence

import flax
import jax.numpy as jnp
import numpy as np

from lcreg_jax import errors

# How many names an error message lists before "and N more".
_SHOWN = 5

_MODULE_LEAVES = {
  # (collection, module kind, flax leaf) -> torch leaf
  ('params', 'conv', 'kernel'): 'weight',
  ('params', 'bn', 'scale'): 'weight',
  ('params', 'bn', 'bias'): 'bias',
  ('batch_stats', 'bn', 'mean'): 'running_mean',
  ('batch_stats', 'bn', 'var'): 'running_var',
}

# safetensors dtype -> NumPy dtype (BF16 is widened to float32 by hand).
_SAFETENSORS_DTYPES = {
  'F64': '<f8',
  'F32': '<f4',
  'F16': '<f2',
  'BF16': '<u2',
  'I64': '<i8',
  'I32': '<i4',
  'I16': '<i2',
  'I8': 'i1',
  'U8': 'u1',
  'BOOL': '?',
}

# torchvision architectures by (block, blocks per layer), for error messages.
_TORCHVISION_ARCHS = {
  ('basic', (2, 2, 2, 2)): 'resnet18',
  ('basic', (3, 4, 6, 3)): 'resnet34',
  ('bottleneck', (3, 4, 6, 3)): 'resnet50',
  ('bottleneck', (3, 4, 23, 3)): 'resnet101',
  ('bottleneck', (3, 8, 36, 3)): 'resnet152',
}


def _listing(items: Sequence[str]) -> str:
  shown = ', '.join(items[:_SHOWN])
  if len(items) > _SHOWN:
    shown += f' and {len(items) - _SHOWN} more'
  return shown


def _plural(n: int, word: str) -> str:
  return f'{n} {word}{"" if n == 1 else "s"}'


def _module_name(flax_name: str) -> tuple[str, str] | None:
  """(kind, torch name) of a conv/BN module inside a block or the stem."""
  if m := re.fullmatch(r'Conv_(\d+)', flax_name):
    return 'conv', f'conv{int(m[1]) + 1}'
  if m := re.fullmatch(r'BatchNorm_(\d+)', flax_name):
    return 'bn', f'bn{int(m[1]) + 1}'
  return {
    'shortcut_conv': ('conv', 'downsample.0'),
    'shortcut_bn': ('bn', 'downsample.1'),
  }.get(flax_name)


def _torch_name(
  collection: str, modules: Sequence[str], leaf: str
) -> str | None:
  """The torchvision name of one backbone variable, None if it has none."""
  if len(modules) == 1:  # The stem.
    block, module = None, modules[0]
    if module.startswith('shortcut_'):
      return None
  elif len(modules) == 2:
    m = re.fullmatch(r'stage(\d+)_block(\d+)', modules[0])
    if not m or int(m[2]) < 1:
      return None
    block, module = f'layer{int(m[1])}.{int(m[2]) - 1}', modules[1]
  else:
    return None
  kind_name = _module_name(module)
  if kind_name is None:
    return None
  kind, name = kind_name
  torch_leaf = _MODULE_LEAVES.get((collection, kind, leaf))
  if torch_leaf is None:
    return None
  return '.'.join(p for p in (block, name, torch_leaf) if p)


def _as_tuple(path) -> tuple[str, ...]:
  return tuple(path.split('/')) if isinstance(path, str) else tuple(path)


def torchvision_name_map(
  flat_flax_paths: Iterable[Any], prefix: Sequence[str] = ('backbone',)
) -> dict[Any, str]:
  """{flax path: torchvision state-dict name} for the backbone variables.

  Args:
    flat_flax_paths: paths of the variables, e.g. the keys of
      `flax.traverse_util.flatten_dict(variables)`: tuples
      (collection, *prefix, *modules, leaf) or the same '/'-joined.
    prefix: the module path of the backbone inside the model, () when the
      variables are the backbone's own.

  Returns:
    One entry per 'params'/'batch_stats' path under `prefix`, keyed by the
    path as given; other paths (e.g. the head) are left out.

  Raises:
    errors.WeightsError: a backbone variable has no torchvision counterpart.
  """
  prefix = tuple(prefix)
  out, unknown = {}, []
  for path in flat_flax_paths:
    parts = _as_tuple(path)
    if (
      len(parts) < len(prefix) + 3
      or parts[0] not in ('params', 'batch_stats')
      or parts[1 : 1 + len(prefix)] != prefix
    ):
      continue
    name = _torch_name(parts[0], parts[1 + len(prefix) : -1], parts[-1])
    if name is None:
      unknown.append('/'.join(parts))
    else:
      out[path] = name
  if unknown:
    raise errors.WeightsError(
      f'the backbone has {_plural(len(unknown), "variable")} with no '
      f'torchvision ResNet counterpart ({_listing(unknown)}); only the '
      'ResNet of lcreg_jax.models.resnet (7×7 stem, stage{i}_block{j} '
      'blocks) can import torchvision weights, so train this backbone '
      'from scratch or leave these variables out with dont_load.'
    )
  return out


def _read_npz(path: str) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as f:
      if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError('it holds a single array, not named arrays')
      return {k: f[k] for k in f.files}
  except Exception as e:  # pylint: disable=broad-except
    raise errors.WeightsError(
      f'could not read the pretrained weights {path} as .npz ({e}); the '
      'file is damaged or not a NumPy archive: download or convert it '
      'again, e.g. with np.savez(path, **state_dict).'
    ) from e


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  def bad(why):
    return errors.WeightsError(
      f'{path} is not a valid .safetensors file: {why}. It may be '
      'truncated or damaged; download or convert it again.'
    )

  with open(path, 'rb') as f:
    data = f.read()
  if len(data) < 8:
    raise bad(
      f'it has {len(data)} bytes, fewer than the 8 of the header length'
    )
  n = int.from_bytes(data[:8], 'little')
  if n > len(data) - 8:
    raise bad(
      f'its header length {n} exceeds the {len(data) - 8} bytes that follow'
    )
  try:
    header = json.loads(data[8 : 8 + n].decode('utf-8'))
  except (UnicodeDecodeError, ValueError) as e:
    raise bad(f'its header is not JSON ({e})') from e
  if not isinstance(header, dict):
    raise bad('its header is not a JSON object')
  buf = memoryview(data)[8 + n :]
  out = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    try:
      dtype = info['dtype']
      shape = tuple(int(s) for s in info['shape'])
      begin, end = (int(o) for o in info['data_offsets'])
      if min(shape, default=0) < 0:
        raise ValueError
    except (TypeError, KeyError, ValueError) as e:
      raise bad(
        f'the header entry of tensor {name!r} is malformed ({info!r:.100})'
      ) from e
    if dtype not in _SAFETENSORS_DTYPES:
      raise errors.WeightsError(
        f'tensor {name} in {path} has dtype {dtype}, which this reader '
        f'does not support ({", ".join(_SAFETENSORS_DTYPES)}); save the '
        'weights as float32.'
      )
    np_dtype = np.dtype(_SAFETENSORS_DTYPES[dtype])
    count = math.prod(shape)
    if not (
      0 <= begin <= end <= len(buf) and end - begin == count * np_dtype.itemsize
    ):
      raise bad(
        f'tensor {name!r} has data offsets [{begin}, {end}] that do '
        f'not fit its shape {list(shape)} and dtype {dtype} in a '
        f'buffer of {len(buf)} bytes'
      )
    arr = np.frombuffer(buf[begin:end], dtype=np_dtype, count=count)
    if dtype == 'BF16':
      arr = (arr.astype(np.uint32) << 16).view(np.float32)
    out[name] = arr.reshape(shape)
  return out


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    stem = os.path.splitext(path)[0]
    raise errors.WeightsError(
      f'{path} is a PyTorch file but torch is not installed (lcreg_jax '
      'does not need it). Convert the file once where torch is installed, '
      f"e.g. in Python: `import torch, numpy as np` then "
      f"`np.savez('{stem}.npz', **{{k: v.float().numpy() for k, v in "
      f"torch.load('{path}', map_location='cpu', "
      "weights_only=True).items()})`, and pass the .npz (or a "
      '.safetensors file) instead.'
    ) from e
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise errors.WeightsError(
      f'torch.load could not read the pretrained weights {path} ({e}); '
      'the file is damaged or not a weights-only state dict: download it '
      'again or save model.state_dict() instead of the whole model.'
    ) from e
  if not isinstance(obj, Mapping):
    raise errors.WeightsError(
      f'{path} holds a {type(obj).__name__}, not a state dict; save '
      'model.state_dict() (a dict of tensors) instead.'
    )
  not_tensors = [str(k) for k, v in obj.items() if not hasattr(v, 'numpy')]
  if not_tensors:
    raise errors.WeightsError(
      f'{path} is not a plain state dict: {_listing(not_tensors)} '
      'are not tensors (a training checkpoint?); save the model\'s '
      'state_dict() (its tensors only) and load that.'
    )
  out = {}
  for k, v in obj.items():
    v = v.detach().cpu()
    if v.dtype == getattr(torch, 'bfloat16', None):
      v = v.float()
    out[str(k)] = np.asarray(v.numpy())
  return out


def read_state_dict(path) -> dict[str, np.ndarray]:
  """The tensors of a .safetensors, .npz or (with torch) .pth/.pt file.

  BF16 tensors become float32, all others keep their dtype.

  Raises:
    errors.WeightsError: the file is missing, of an unknown kind, damaged,
      or a .pth/.pt file while torch is not installed.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise errors.WeightsError(
      f'the pretrained weights file {path} does not exist (or is not a '
      'file); check the path, or download the torchvision weights and '
      'convert them to .safetensors or .npz.'
    )
  ext = os.path.splitext(path)[1].lower()
  try:
    if ext == '.npz':
      return _read_npz(path)
    if ext == '.safetensors':
      return _read_safetensors(path)
    if ext in ('.pth', '.pt'):
      return _read_torch(path)
  except OSError as e:
    raise errors.WeightsError(
      f'could not read the pretrained weights {path} ({e}); check that '
      'the file is readable.'
    ) from e
  raise errors.WeightsError(
    f'the pretrained weights file {path} has the unknown extension '
    f'{ext or "(none)"!r}; use a .safetensors or .npz file (or .pth/.pt '
    'when torch is installed).'
  )


def _architecture(names: Iterable[str]) -> str:
  """Words for the ResNet whose torchvision state dict has `names`."""
  names = list(names)
  blocks: dict[int, int] = {}
  for n in names:
    if m := re.match(r'layer(\d+)\.(\d+)\.', n):
      layer, block = int(m[1]), int(m[2])
      blocks[layer] = max(blocks.get(layer, 0), block + 1)
  if not blocks:
    hint = ''
    if names and all(n.startswith('module.') for n in names):
      hint = (
        ", all starting with 'module.' (a DataParallel checkpoint: "
        'strip that prefix when converting it)'
      )
    return (
      f'no torchvision ResNet blocks (names like {_listing(names[:3])}{hint})'
    )
  counts = tuple(blocks.get(i, 0) for i in range(1, max(blocks) + 1))
  kind = (
    'bottleneck'
    if any(re.match(r'layer\d+\.\d+\.conv3\.', n) for n in names)
    else 'basic'
  )
  arch = _TORCHVISION_ARCHS.get((kind, counts))
  return f'{kind} blocks per layer {counts}' + (
    f' (torchvision {arch})' if arch else ''
  )


_LEAF_RANK = {'weight': 0, 'bias': 1, 'running_mean': 2, 'running_var': 3}


def _torch_order(name: str):
  """Sort key of torchvision's state-dict order (conv1, bn1, conv2, ...)."""
  m = re.fullmatch(
    r'(?:layer(\d+)\.(\d+)\.)?(conv|bn|downsample\.)(\d+)\.'
    r'(\w+)',
    name,
  )
  if not m:
    return (1 << 30, 0, 0, 0, name)
  layer, block = int(m[1] or 0), int(m[2] or 0)
  rank = {'conv': 0, 'bn': 1, 'downsample.': 1000}[m[3]]
  module = rank + (int(m[4]) if m[3] == 'downsample.' else 2 * int(m[4]))
  return (layer, block, module, _LEAF_RANK.get(m[5], 9), name)


def _ignored(name: str) -> bool:
  return name.startswith('fc.') or name.split('.')[-1] == 'num_batches_tracked'


def _dont_load_patterns(dont_load: Sequence[str], joined: dict) -> list:
  """The compiled dont_load regexes, each checked to match some variable."""
  patterns = []
  for pattern in dont_load:
    try:
      regex = re.compile(pattern)
    except re.error as e:
      raise errors.WeightsError(
        f'dont_load pattern {pattern!r} is not a regular expression ({e}); '
        'fix it (patterns match whole paths such as '
        "'params/backbone/stage4_block3/.*')."
      ) from e
    if not any(regex.fullmatch(j) for j in joined.values()):
      raise errors.WeightsError(
        f'dont_load pattern {pattern!r} matches no variable of the model, '
        'so it would keep nothing at its initial value; patterns match '
        'whole \'/\'-joined paths such as '
        f'{_listing([repr(j) for j in list(joined.values())[:2]])}: fix '
        'the pattern.'
      )
    patterns.append(regex)
  return patterns


def _fit_error(source: str, state_dict, used, missing, misshaped, extra):
  """The one WeightsError naming every tensor that does not fit."""
  missing, misshaped, extra = (
    sorted(names, key=_torch_order) for names in (missing, misshaped, extra)
  )
  problems = []
  if missing:
    problems.append(
      f'{_plural(len(missing), "tensor")} that the model '
      f'needs {"is" if len(missing) == 1 else "are"} not in '
      f'the file ({_listing(missing)})'
    )
  if misshaped:
    problems.append(
      f'{_plural(len(misshaped), "tensor")} '
      f'{"has" if len(misshaped) == 1 else "have"} the wrong '
      f'shape (in torch\'s OIHW layout for convs): '
      f'{_listing(misshaped)}'
    )
  if extra:
    problems.append(
      f'{_plural(len(extra), "tensor")} in the file '
      f'{"is" if len(extra) == 1 else "are"} not part of the '
      f'model ({_listing(extra)})'
    )
  return errors.WeightsError(
    f'the weights in {source} do not fit the backbone: '
    + '; '.join(problems)
    + '. The file holds '
    + _architecture(state_dict)
    + ', the model has '
    + _architecture(used)
    + '. Use the '
    'weights of the same architecture as the backbone (or the backbone '
    'of these weights); variables that should keep their initial '
    'values can be left out with dont_load.'
  )


def import_state_dict(
  variables,
  state_dict: Mapping[str, Any],
  *,
  dont_load: Sequence[str] = (),
  prefix: Sequence[str] = ('backbone',),
  source: str = 'the state dict',
):
  """`load_torchvision_resnet` for a state dict already in memory.

  `source` names the state dict in error messages (e.g. its file).
  """
  flat = flax.traverse_util.flatten_dict(variables)
  joined = {p: '/'.join(p) for p in flat}
  patterns = _dont_load_patterns(dont_load, joined)
  name_map = torchvision_name_map(flat, prefix)
  if not name_map:
    raise errors.WeightsError(
      f'the variables have no params or batch_stats under '
      f'{"/".join(prefix) or "(top level)"}, so there is nowhere to put '
      f'the weights of {source}; pass the prefix of the ResNet backbone '
      "(('backbone',) in LongTailNet, () for the ResNet alone)."
    )

  new = dict(flat)
  missing, misshaped = [], []
  for path, name in name_map.items():
    if any(r.fullmatch(joined[path]) for r in patterns):
      continue
    target = flat[path]
    want = tuple(target.shape)
    if path[-1] == 'kernel' and len(want) == 4:
      want = tuple(want[i] for i in (3, 2, 0, 1))  # HWIO -> OIHW
    if name not in state_dict:
      missing.append(name)
      continue
    arr = np.asarray(state_dict[name])
    if arr.shape != want:
      misshaped.append(f'{name} (file {arr.shape}, model needs {want})')
      continue
    if path[-1] == 'kernel':
      arr = arr.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    new[path] = jnp.asarray(arr, dtype=target.dtype)
  used = set(name_map.values())
  extra = [n for n in state_dict if n not in used and not _ignored(n)]
  if missing or misshaped or extra:
    raise _fit_error(source, state_dict, used, missing, misshaped, extra)
  return flax.traverse_util.unflatten_dict(new)


def load_torchvision_resnet(
  variables,
  path,
  *,
  dont_load: Sequence[str] = (),
  prefix: Sequence[str] = ('backbone',),
):
  """Returns a copy of `variables` with torchvision ResNet weights imported.

  Args:
    variables: {'params': ..., 'batch_stats': ...} as from `model.init` (or
      `jax.eval_shape` of it); not modified.
    path: a torchvision ResNet state dict as .safetensors, .npz, or .pth/.pt
      (the last only when torch is installed).
    dont_load: regular expressions matched (re.fullmatch) against the
      '/'-joined flax paths, e.g. 'params/backbone/stage4_block3/.*' or
      '.*/backbone/stage4_block3/.*' (params and batch_stats); matching
      entries keep their initial values (Places-LT retrains the last block
      from scratch). Each pattern must match some variable.
    prefix: the module path of the ResNet inside the model.

  Returns:
    New nested dicts: every backbone variable not excluded by `dont_load`
    holds the file's value (conv kernels OIHW -> HWIO, BN weight -> scale,
    running_mean/var -> batch_stats mean/var), cast to the variable's dtype;
    everything else, including the classifier head, is the input's. The
    file's classifier fc.* and the counters num_batches_tracked are never
    imported.

  Raises:
    errors.WeightsError: the file cannot be read, or does not fit: all
      missing, mis-shaped and unused tensors are listed in one message.
  """
  path = os.fspath(path)
  return import_state_dict(
    variables,
    read_state_dict(path),
    dont_load=dont_load,
    prefix=prefix,
    source=path,
  )
