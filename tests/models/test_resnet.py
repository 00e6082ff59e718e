import flax
import jax
import jax.numpy as jnp

from lcreg_jax.models import resnet


def _shapes(name, shortcut, size, channels):
  model = resnet.make_backbone(name, shortcut)
  x = jnp.zeros((2, size, size, channels))
  variables = jax.eval_shape(
    lambda: model.init(jax.random.key(0), x, train=False)
  )
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  return out.shape, flax.traverse_util.flatten_dict(variables['params'])


def test_resnet32_cifar_map_and_parameter_count():
  shape, params = _shapes('resnet32', 'A', 32, 3)
  assert shape == (2, 8, 8, 64)  # docs/method.md §2
  # He et al.'s CIFAR ResNet-32 has 0.46M parameters (option A: none in
  # shortcuts); conv weights + BN scale/offset.
  n = sum(v.size for v in params.values())
  assert 0.45e6 < n < 0.47e6, n
  assert not any('shortcut' in '/'.join(k) for k in params)


def test_option_b_adds_projection_shortcuts_and_any_channel_count():
  shape, params = _shapes('resnet32', 'B', 28, 1)
  assert shape == (2, 7, 7, 64)
  assert sum('shortcut_conv' in '/'.join(k) for k in params) == 2


def test_resnet50_imagenet_map():
  shape, _ = _shapes('resnet50', 'B', 224, 3)
  assert shape == (2, 7, 7, 2048)
