"""Importing torchvision ResNet weights: checked against a NumPy float64
forward pass written from the torch-layout state dict itself."""

import json
import struct
import sys
import types

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcreg_jax import errors
from lcreg_jax.models import network
from lcreg_jax.models import pretrained
from lcreg_jax.models import resnet

NUM_CLASSES = 5
WIDTHS = (8, 16)


def _model(stage_sizes=(1, 1)):
  backbone = resnet.ResNet(
    stage_sizes=stage_sizes, block='bottleneck', widths=WIDTHS, stem='imagenet'
  )
  return network.LongTailNet(backbone=backbone, num_classes=NUM_CLASSES)


@pytest.fixture(scope='module')
def model_and_variables():
  model = _model()
  variables = model.init(
    jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=False
  )
  return model, variables


def _torchvision_state_dict(stage_sizes=(1, 1), seed=0):
  """Random torchvision-layout state dict for a bottleneck ResNet with a 64
  channel stem, written from torchvision's naming, not from our mapping."""
  rng = np.random.default_rng(seed)
  sd = {}

  def conv(name, o, i, k):
    sd[name + '.weight'] = (
      rng.standard_normal((o, i, k, k)) * np.sqrt(2 / (i * k * k))
    ).astype(np.float32)

  def bn(name, c):
    sd[name + '.weight'] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[name + '.bias'] = rng.normal(0, 0.2, c).astype(np.float32)
    sd[name + '.running_mean'] = rng.normal(0, 0.2, c).astype(np.float32)
    sd[name + '.running_var'] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[name + '.num_batches_tracked'] = np.array(100, np.int64)

  conv('conv1', 64, 3, 7)
  bn('bn1', 64)
  cin = 64
  for layer, (size, width) in enumerate(zip(stage_sizes, WIDTHS), 1):
    for b in range(size):
      p = f'layer{layer}.{b}.'
      conv(p + 'conv1', width, cin, 1)
      bn(p + 'bn1', width)
      conv(p + 'conv2', width, width, 3)
      bn(p + 'bn2', width)
      conv(p + 'conv3', 4 * width, width, 1)
      bn(p + 'bn3', 4 * width)
      if b == 0:
        conv(p + 'downsample.0', 4 * width, cin, 1)
        bn(p + 'downsample.1', 4 * width)
      cin = 4 * width
  sd['fc.weight'] = rng.standard_normal((1000, cin)).astype(np.float32)
  sd['fc.bias'] = rng.standard_normal(1000).astype(np.float32)
  return sd


def _bf16_round(x):
  """Truncate float32 values to bfloat16 (kept as float32)."""
  bits = np.asarray(x, np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
  return bits.view(np.float32)


# Tensors the safetensors file stores in other dtypes than F32.
SAFETENSORS_DTYPES = {
  'layer2.0.conv2.weight': 'BF16',
  'bn1.running_var': 'F16',
  'layer1.0.bn3.weight': 'F64',
}


@pytest.fixture(scope='module')
def state_dict():
  sd = _torchvision_state_dict()
  # Values exactly representable in the dtypes of the safetensors file, so
  # that both files hold the same numbers.
  sd['layer2.0.conv2.weight'] = _bf16_round(sd['layer2.0.conv2.weight'])
  sd['bn1.running_var'] = (
    sd['bn1.running_var'].astype(np.float16).astype(np.float32)
  )
  return sd


def _write_safetensors(path, tensors, dtypes=None):
  dtypes = dtypes or {}
  header, chunks, offset = {'__metadata__': {'format': 'pt'}}, [], 0
  for name, arr in tensors.items():
    dtype = dtypes.get(
      name, {np.dtype(np.float32): 'F32', np.dtype(np.int64): 'I64'}[arr.dtype]
    )
    if dtype == 'BF16':
      raw = (np.asarray(arr, '<f4').view('<u4') >> 16).astype('<u2').tobytes()
    else:
      raw = np.asarray(
        arr, {'F32': '<f4', 'F16': '<f2', 'F64': '<f8', 'I64': '<i8'}[dtype]
      ).tobytes()
    header[name] = {
      'dtype': dtype,
      'shape': list(arr.shape),
      'data_offsets': [offset, offset + len(raw)],
    }
    chunks.append(raw)
    offset += len(raw)
  head = json.dumps(header).encode()
  head += b' ' * (-len(head) % 8)
  path.write_bytes(struct.pack('<Q', len(head)) + head + b''.join(chunks))
  return path


def _write(tmp_path, sd, kind='npz'):
  path = tmp_path / f'weights.{kind}'
  if kind == 'npz':
    np.savez(path, **sd)
  else:
    _write_safetensors(path, sd, SAFETENSORS_DTYPES)
  return path


# ---- Independent NumPy float64 forward pass in torch's NCHW/OIHW layout.


def _conv(x, w, stride, pad):
  n, c, h, wd = x.shape
  _, _, kh, kw = w.shape
  xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
  cols = np.empty((n, c, kh, kw, ho, wo))
  for a in range(kh):
    for b in range(kw):
      cols[:, :, a, b] = xp[
        :, :, a : a + stride * ho : stride, b : b + stride * wo : stride
      ]
  return np.einsum('ncabhw,ocab->nohw', cols, w.astype(np.float64))


def _bn(x, sd, name):
  g = lambda k: sd[f'{name}.{k}'].astype(np.float64)[None, :, None, None]
  return (x - g('running_mean')) / np.sqrt(g('running_var') + 1e-5) * g(
    'weight'
  ) + g('bias')


def _max_pool(x):
  xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  ho, wo = (x.shape[2] - 1) // 2 + 1, (x.shape[3] - 1) // 2 + 1
  windows = [
    xp[:, :, a : a + 2 * ho : 2, b : b + 2 * wo : 2]
    for a in range(3)
    for b in range(3)
  ]
  return np.max(windows, axis=0)


def _reference_features(sd, x_nhwc, stage_sizes=(1, 1)):
  relu = lambda v: np.maximum(v, 0)
  x = np.transpose(x_nhwc, (0, 3, 1, 2)).astype(np.float64)
  x = _max_pool(relu(_bn(_conv(x, sd['conv1.weight'], 2, 3), sd, 'bn1')))
  for layer, size in enumerate(stage_sizes, 1):
    for b in range(size):
      p = f'layer{layer}.{b}.'
      stride = 2 if layer > 1 and b == 0 else 1
      y = relu(_bn(_conv(x, sd[p + 'conv1.weight'], 1, 0), sd, p + 'bn1'))
      y = relu(_bn(_conv(y, sd[p + 'conv2.weight'], stride, 1), sd, p + 'bn2'))
      y = _bn(_conv(y, sd[p + 'conv3.weight'], 1, 0), sd, p + 'bn3')
      if p + 'downsample.0.weight' in sd:
        x = _bn(
          _conv(x, sd[p + 'downsample.0.weight'], stride, 0),
          sd,
          p + 'downsample.1',
        )
      x = relu(x + y)
  return np.transpose(x, (0, 2, 3, 1))  # NHWC


def _flat(tree):
  return {
    '/'.join(k): np.asarray(v)
    for k, v in flax.traverse_util.flatten_dict(tree).items()
  }


# ---- Tests.


@pytest.mark.parametrize('kind', ['npz', 'safetensors'])
def test_forward_matches_numpy_reference(
  kind, model_and_variables, state_dict, tmp_path
):
  model, variables = model_and_variables
  loaded = pretrained.load_torchvision_resnet(
    variables, _write(tmp_path, state_dict, kind)
  )
  x = (
    np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
  )
  out = model.apply(loaded, x, train=False)
  got = np.asarray(out['feature_map']).reshape(2, 4, 4, 64)
  want = _reference_features(state_dict, x)
  assert np.abs(want).max() > 0.5  # a non-trivial output
  np.testing.assert_allclose(
    got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max()
  )
  # The classifier of the file (1000 classes) is not imported.
  for k, v in _flat(variables['params']['head']).items():
    np.testing.assert_array_equal(_flat(loaded['params']['head'])[k], v)


def test_safetensors_dtypes_are_converted(state_dict, tmp_path):
  read = pretrained.read_state_dict(_write(tmp_path, state_dict, 'safetensors'))
  assert set(read) == set(state_dict)
  for name in SAFETENSORS_DTYPES:
    np.testing.assert_array_equal(read[name], state_dict[name])
  assert read['layer2.0.conv2.weight'].dtype == np.float32  # BF16 widened
  assert read['bn1.running_var'].dtype == np.float16
  assert read['layer1.0.bn3.weight'].dtype == np.float64
  assert read['bn1.num_batches_tracked'].dtype == np.int64
  assert read['bn1.num_batches_tracked'].shape == ()


def test_name_map_of_resnet50_is_the_torchvision_layout():
  model = resnet.make_backbone('resnet50')
  variables = jax.eval_shape(
    lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False
    )
  )
  flat = flax.traverse_util.flatten_dict(variables)
  names = pretrained.torchvision_name_map(flat, prefix=())
  assert names[('params', 'Conv_0', 'kernel')] == 'conv1.weight'
  assert names[('params', 'BatchNorm_0', 'scale')] == 'bn1.weight'
  assert (
    names[('batch_stats', 'stage3_block6', 'BatchNorm_2', 'var')]
    == 'layer3.5.bn3.running_var'
  )
  assert (
    names[('params', 'stage4_block1', 'shortcut_conv', 'kernel')]
    == 'layer4.0.downsample.0.weight'
  )
  assert (
    names[('batch_stats', 'stage1_block1', 'shortcut_bn', 'mean')]
    == 'layer1.0.downsample.1.running_mean'
  )
  # torchvision resnet50's state dict has 320 entries: 53 conv weights, 53
  # BNs × 5 (one is num_batches_tracked) and fc.{weight,bias}.
  expected = {'conv1.weight'} | {
    f'bn1.{k}' for k in ('weight', 'bias', 'running_mean', 'running_var')
  }
  for layer, size in enumerate((3, 4, 6, 3), 1):
    for b in range(size):
      mods = ['conv1', 'bn1', 'conv2', 'bn2', 'conv3', 'bn3']
      if b == 0:
        mods += ['downsample.0', 'downsample.1']
      for m in mods:
        if m.startswith('conv') or m == 'downsample.0':
          expected.add(f'layer{layer}.{b}.{m}.weight')
        else:
          expected |= {
            f'layer{layer}.{b}.{m}.{k}'
            for k in ('weight', 'bias', 'running_mean', 'running_var')
          }
  assert len(expected) == 320 - 53 - 2
  assert sorted(names.values()) == sorted(expected)
  assert len(names) == len(flat)
  # Shapes in torchvision's layout (OIHW).
  kernel = flat[('params', 'stage3_block1', 'Conv_1', 'kernel')]
  assert kernel.shape == (3, 3, 256, 256)  # layer3.0.conv2: (256, 256, 3, 3)
  # '/'-joined paths work as well, and the head is not part of the backbone.
  assert pretrained.torchvision_name_map(
    ['params/backbone/stage2_block3/BatchNorm_1/bias', 'params/head/fc/kernel']
  ) == {'params/backbone/stage2_block3/BatchNorm_1/bias': 'layer2.2.bn2.bias'}


def test_dont_load_keeps_initial_values(
  model_and_variables, state_dict, tmp_path
):
  _, variables = model_and_variables
  excluded = 'backbone/stage2_block1/'
  before = _flat(variables)
  path = _write(tmp_path, state_dict)
  loaded = pretrained.load_torchvision_resnet(
    variables, path, dont_load=[f'.*/{excluded}.*']
  )
  after = _flat(loaded)
  assert set(after) == set(before)
  n_kept = n_loaded = 0
  for k, v in after.items():
    if excluded in k or '/head/' in k:
      np.testing.assert_array_equal(v, before[k], err_msg=k)
      n_kept += 1
    else:
      assert not np.array_equal(v, before[k]), k
      n_loaded += 1
  # Head: fc kernel and bias. Stem: conv, BN (4). Blocks: 4 convs, 4 BNs (4).
  assert (n_kept, n_loaded) == (2 + 20, 5 + 20)
  np.testing.assert_array_equal(
    after['params/backbone/stage1_block1/Conv_1/kernel'],
    state_dict['layer1.0.conv2.weight'].transpose(2, 3, 1, 0),
  )
  np.testing.assert_array_equal(
    after['batch_stats/backbone/stage1_block1/shortcut_bn/var'],
    state_dict['layer1.0.downsample.1.running_var'],
  )
  # The excluded block may be absent from the file; params only: the
  # batch_stats are imported.
  partial = {
    k: v for k, v in state_dict.items() if not k.startswith('layer2.0.')
  }
  with pytest.raises(errors.WeightsError, match='layer2.0.bn1.running_mean'):
    pretrained.import_state_dict(
      variables, partial, dont_load=[f'params/{excluded}.*']
    )
  loaded = _flat(
    pretrained.import_state_dict(
      variables, partial, dont_load=[f'.*/{excluded}.*']
    )
  )
  for k, v in loaded.items():
    if excluded in k:
      np.testing.assert_array_equal(v, before[k], err_msg=k)
  # The input is not modified.
  for k, v in _flat(variables).items():
    np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_dont_load_pattern_must_match(model_and_variables, state_dict):
  _, variables = model_and_variables
  with pytest.raises(errors.WeightsError, match='stage4_block3'):
    pretrained.import_state_dict(
      variables, state_dict, dont_load=['params/backbone/stage4_block3/.*']
    )


def test_dtype_of_variables_is_kept(model_and_variables, state_dict):
  _, variables = model_and_variables
  half = jax.tree.map(lambda v: v.astype(jnp.bfloat16), variables)
  loaded = pretrained.import_state_dict(half, state_dict)
  for leaf in jax.tree.leaves(loaded):
    assert leaf.dtype == jnp.bfloat16
  np.testing.assert_allclose(
    np.asarray(loaded['params']['backbone']['BatchNorm_0']['bias'], np.float32),
    state_dict['bn1.bias'],
    rtol=1e-2,
  )


def test_all_problems_are_listed_in_one_error(model_and_variables, state_dict):
  _, variables = model_and_variables
  sd = dict(state_dict)
  del sd['layer1.0.bn2.running_mean']
  del sd['layer2.0.downsample.0.weight']
  sd['layer2.0.conv3.weight'] = np.zeros((64, 16, 3, 3), np.float32)
  sd['layer3.0.conv1.weight'] = np.zeros((32, 64, 1, 1), np.float32)
  with pytest.raises(errors.WeightsError) as e:
    pretrained.import_state_dict(variables, sd, source='w.npz')
  msg = str(e.value)
  for name in (
    'layer1.0.bn2.running_mean',
    'layer2.0.downsample.0.weight',
    'layer2.0.conv3.weight',
    '(64, 16, 3, 3)',
    '(64, 16, 1, 1)',
    'layer3.0.conv1.weight',
    'w.npz',
  ):
    assert name in msg, (name, msg)
  assert '\n' not in msg


@pytest.mark.parametrize(
  'change,names',
  [
    (lambda sd: sd.pop('bn1.bias'), ['bn1.bias', '1 tensor']),
    (
      lambda sd: sd.update(
        {'layer1.0.conv1.weight': np.zeros((8, 64, 3, 3), np.float32)}
      ),
      ['layer1.0.conv1.weight', '(8, 64, 3, 3)', '(8, 64, 1, 1)'],
    ),
  ],
)
def test_missing_or_misshaped_tensor(
  change, names, model_and_variables, state_dict, tmp_path
):
  _, variables = model_and_variables
  sd = dict(state_dict)
  change(sd)
  path = _write(tmp_path, sd)
  with pytest.raises(errors.WeightsError) as e:
    pretrained.load_torchvision_resnet(variables, path)
  for name in names + [str(path)]:
    assert name in str(e.value)


def test_wrong_architecture(model_and_variables, tmp_path):
  _, variables = model_and_variables
  # A file with one more block in layer 2: extra tensors.
  path = _write(tmp_path, _torchvision_state_dict((1, 2)))
  with pytest.raises(errors.WeightsError) as e:
    pretrained.load_torchvision_resnet(variables, path)
  msg = str(e.value)
  assert 'layer2.1.conv1.weight' in msg and 'are not part of the model' in msg
  assert 'per layer (1, 2)' in msg and 'per layer (1, 1)' in msg
  # A model with one more block than the file: missing tensors.
  bigger = jax.eval_shape(
    lambda: _model((1, 2)).init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
    )
  )
  with pytest.raises(errors.WeightsError, match=r'layer2\.1\.conv1\.weight'):
    pretrained.import_state_dict(bigger, _torchvision_state_dict((1, 1)))


def test_unreadable_files(model_and_variables, tmp_path):
  _, variables = model_and_variables
  load = lambda p: pretrained.load_torchvision_resnet(variables, p)
  missing = tmp_path / 'nope.safetensors'
  with pytest.raises(errors.WeightsError, match='nope.safetensors'):
    load(missing)
  unknown = tmp_path / 'weights.h5'
  unknown.write_bytes(b'\x89HDF')
  with pytest.raises(errors.WeightsError, match=r'weights\.h5.*\.h5'):
    load(unknown)
  corrupt = tmp_path / 'corrupt.npz'
  corrupt.write_bytes(b'not a zip file at all')
  with pytest.raises(errors.WeightsError, match='corrupt.npz'):
    load(corrupt)
  # safetensors: a header length beyond the file, a header that is not JSON,
  # data offsets that do not fit the shape.
  good = _write_safetensors(
    tmp_path / 'good.safetensors', {'a': np.zeros((2, 3), np.float32)}
  ).read_bytes()
  n = struct.unpack('<Q', good[:8])[0]
  header = json.loads(good[8 : 8 + n])
  header['a']['data_offsets'] = [0, 20]
  head = json.dumps(header).encode()
  for name, content, why in [
    ('long', struct.pack('<Q', 10**6) + good[8:], 'header length'),
    ('json', good[:8] + b'x' + good[9:], 'not JSON'),
    (
      'offsets',
      struct.pack('<Q', len(head)) + head + good[8 + n :],
      r"'a' has data offsets \[0, 20\]",
    ),
    ('short', b'\x01\x02', 'fewer than the 8'),
  ]:
    path = tmp_path / f'{name}.safetensors'
    path.write_bytes(content)
    with pytest.raises(
      errors.WeightsError, match=rf'{name}\.safetensors.*{why}'
    ):
      load(path)


def test_pth_needs_torch(
  model_and_variables, state_dict, tmp_path, monkeypatch
):
  _, variables = model_and_variables
  path = tmp_path / 'resnet50.pth'
  path.write_bytes(b'whatever')
  monkeypatch.setitem(sys.modules, 'torch', None)  # import torch fails
  with pytest.raises(errors.WeightsError) as e:
    pretrained.load_torchvision_resnet(variables, path)
  msg = str(e.value)
  assert str(path) in msg and 'torch is not installed' in msg
  assert 'np.savez' in msg and '.safetensors' in msg

  # With torch: torch.load(path, map_location='cpu', weights_only=True) and
  # .numpy() of each tensor (a stand-in module; torch is not a dependency).
  class Tensor:
    def __init__(self, arr):
      self.arr, self.dtype = arr, arr.dtype

    def detach(self):
      return self

    def cpu(self):
      return self

    def numpy(self):
      return self.arr

  calls = []

  def fake_load(p, **kwargs):
    calls.append((str(p), kwargs))
    return {k: Tensor(v) for k, v in state_dict.items()}

  fake = types.SimpleNamespace(load=fake_load, bfloat16='bf16')
  monkeypatch.setitem(sys.modules, 'torch', fake)
  loaded = pretrained.load_torchvision_resnet(variables, path)
  assert calls == [(str(path), {'map_location': 'cpu', 'weights_only': True})]
  np.testing.assert_array_equal(
    loaded['params']['backbone']['stage2_block1']['Conv_2']['kernel'],
    state_dict['layer2.0.conv3.weight'].transpose(2, 3, 1, 0),
  )


def test_backbone_variables_without_torchvision_name(
  model_and_variables, state_dict
):
  _, variables = model_and_variables
  odd = dict(variables, params=dict(variables['params']))
  odd['params']['backbone'] = dict(
    odd['params']['backbone'], latent_proj={'kernel': jnp.zeros((2, 2))}
  )
  with pytest.raises(
    errors.WeightsError, match='params/backbone/latent_proj/kernel'
  ):
    pretrained.import_state_dict(odd, state_dict)
  with pytest.raises(errors.WeightsError, match='under encoder'):
    pretrained.import_state_dict(variables, state_dict, prefix=('encoder',))
