"""ResNet backbones (docs/method.md §2) that return the last feature map.

The CIFAR ResNet-32 follows He et al. (3 stages of BasicBlocks, 16/32/64
channels) with the option-A (parameter-free) or option-B (1×1 conv) shortcut;
the ImageNet ResNets (10/50/152) use the usual 7×7 stem. No pooling or
classifier here: LCReg needs the spatial map.
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lcreg_jax.models import inits


def residual_scale_init(zero: bool):
  """The scale init of a residual branch's last BatchNorm: zeros make each
  block start as the identity (Goyal et al.; torchvision's
  `zero_init_residual`, off in MiSLAS)."""
  return nn.initializers.zeros if zero else nn.initializers.ones


class BasicBlock(nn.Module):
  filters: int
  strides: int = 1
  shortcut: str = 'A'
  norm: Any = nn.BatchNorm
  dtype: Any = jnp.float32  # computation; parameters stay float32
  conv_init: Callable = nn.initializers.kaiming_normal()
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(
      nn.Conv, use_bias=False, kernel_init=self.conv_init, dtype=self.dtype
    )
    y = conv(self.filters, (3, 3), self.strides, padding=1)(x)
    y = nn.relu(self.norm()(y))
    y = conv(self.filters, (3, 3), padding=1)(y)
    y = self.norm(scale_init=residual_scale_init(self.zero_init_residual))(y)
    if x.shape[-1] != self.filters or self.strides != 1:
      if self.shortcut == 'A':
        # Option A: subsample and zero-pad channels, no parameters.
        x = x[:, :: self.strides, :: self.strides, :]
        extra = self.filters - x.shape[-1]
        x = jnp.pad(
          x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2))
        )
      elif self.shortcut == 'B':
        x = conv(self.filters, (1, 1), self.strides, name='shortcut_conv')(x)
        x = self.norm(name='shortcut_bn')(x)
      else:
        raise ValueError(f"Unknown shortcut {self.shortcut!r}; use 'A' or 'B'.")
    return nn.relu(x + y)


class BottleneckBlock(nn.Module):
  filters: int
  strides: int = 1
  shortcut: str = 'B'
  norm: Any = nn.BatchNorm
  dtype: Any = jnp.float32  # computation; parameters stay float32
  conv_init: Callable = nn.initializers.kaiming_normal()
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(
      nn.Conv, use_bias=False, kernel_init=self.conv_init, dtype=self.dtype
    )
    y = nn.relu(self.norm()(conv(self.filters, (1, 1))(x)))
    y = nn.relu(
      self.norm()(conv(self.filters, (3, 3), self.strides, padding=1)(y))
    )
    y = self.norm(scale_init=residual_scale_init(self.zero_init_residual))(
      conv(self.filters * 4, (1, 1))(y)
    )
    if x.shape[-1] != self.filters * 4 or self.strides != 1:
      x = conv(self.filters * 4, (1, 1), self.strides, name='shortcut_conv')(x)
      x = self.norm(name='shortcut_bn')(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """Returns the (B, H, W, D) feature map of the last stage.

  With `trainable_blocks` = k, only the last k residual blocks learn: the stem
  and the blocks before them run in inference mode (BatchNorm with its
  running statistics) and pass no gradient, as MiSLAS trains Places-LT on a
  frozen ImageNet trunk. None: everything learns. `weight_init` ('authors' or
  'flax', `inits.INITS`) picks the conv initialiser with the stem's family.
  """

  stage_sizes: Sequence[int]
  block: str = 'basic'
  widths: Sequence[int] = (16, 32, 64)
  stem: str = 'cifar'
  shortcut: str = 'A'
  dtype: Any = jnp.float32
  trainable_blocks: int | None = None
  weight_init: str = 'authors'
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x, train: bool = True):
    first_trainable = (
      0
      if self.trainable_blocks is None
      else sum(self.stage_sizes) - self.trainable_blocks
    )
    frozen = first_trainable > 0
    norm = functools.partial(
      nn.BatchNorm, momentum=0.9, epsilon=1e-5, dtype=self.dtype
    )
    stem_norm = functools.partial(norm, use_running_average=frozen or not train)
    conv_init = inits.conv_init(self.weight_init, self.stem)
    x = x.astype(self.dtype)
    if self.stem == 'cifar':
      x = nn.Conv(
        self.widths[0],
        (3, 3),
        padding=1,
        use_bias=False,
        kernel_init=conv_init,
        dtype=self.dtype,
      )(x)
      x = nn.relu(stem_norm()(x))
    elif self.stem == 'imagenet':
      x = nn.Conv(
        64,
        (7, 7),
        2,
        padding=3,
        use_bias=False,
        kernel_init=conv_init,
        dtype=self.dtype,
      )(x)
      x = nn.relu(stem_norm()(x))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    else:
      raise ValueError(
        f"Unknown stem {self.stem!r}; use 'cifar' or 'imagenet'."
      )
    block_cls = {'basic': BasicBlock, 'bottleneck': BottleneckBlock}[self.block]
    index = 0
    for i, (size, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(size):
        if index == first_trainable and frozen:
          # Nothing flows back into the frozen trunk: XLA skips its backward.
          x = jax.lax.stop_gradient(x)
        strides = 2 if i > 0 and j == 0 else 1
        block_norm = functools.partial(
          norm, use_running_average=index < first_trainable or not train
        )
        x = block_cls(
          width,
          strides,
          shortcut=self.shortcut,
          norm=block_norm,
          dtype=self.dtype,
          conv_init=conv_init,
          zero_init_residual=self.zero_init_residual,
          name=f'stage{i + 1}_block{j + 1}',
        )(x)
        index += 1
    return x.astype(jnp.float32)


def block_names(name: str) -> list[str]:
  """The residual blocks of a backbone, in order ('stage1_block1', ...)."""
  return [
    f'stage{i + 1}_block{j + 1}'
    for i, size in enumerate(BACKBONES[name]['stage_sizes'])
    for j in range(size)
  ]


BACKBONES = {
  'resnet32': dict(
    stage_sizes=(5, 5, 5), block='basic', widths=(16, 32, 64), stem='cifar'
  ),
  'resnet8': dict(
    stage_sizes=(1, 1, 1), block='basic', widths=(16, 32, 64), stem='cifar'
  ),
  'resnet10': dict(
    stage_sizes=(1, 1, 1, 1),
    block='basic',
    widths=(64, 128, 256, 512),
    stem='imagenet',
    shortcut='B',
  ),
  'resnet50': dict(
    stage_sizes=(3, 4, 6, 3),
    block='bottleneck',
    widths=(64, 128, 256, 512),
    stem='imagenet',
  ),
  'resnet152': dict(
    stage_sizes=(3, 8, 36, 3),
    block='bottleneck',
    widths=(64, 128, 256, 512),
    stem='imagenet',
  ),
}


def feature_dim(name: str) -> int:
  """D, the channels of the backbone's last feature map."""
  spec = BACKBONES[name]
  return spec['widths'][-1] * (4 if spec['block'] == 'bottleneck' else 1)


def family(name: str) -> str:
  """'cifar' or 'imagenet': the stem, and the authors' init, of a backbone."""
  return BACKBONES[name]['stem']


def make_backbone(
  name: str,
  shortcut: str = 'A',
  dtype=jnp.float32,
  trainable_blocks: int | None = None,
  weight_init: str = 'authors',
  zero_init_residual: bool = False,
) -> ResNet:
  if name not in BACKBONES:
    raise ValueError(
      f'Unknown backbone {name!r}; choose one of '
      f'{sorted(BACKBONES)} with --config.model.backbone.'
    )
  kwargs = dict(BACKBONES[name])
  kwargs.setdefault('shortcut', shortcut)
  return ResNet(
    dtype=dtype,
    trainable_blocks=trainable_blocks,
    weight_init=weight_init,
    zero_init_residual=zero_init_residual,
    **kwargs,
  )
