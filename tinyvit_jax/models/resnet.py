"""ResNet (He et al., 2016, arXiv:1512.03385) in Flax NNX, NHWC: a convnet teacher.

Reads top to bottom as timm's ``resnet.py`` default ResNet: a 7x7 stride-2 conv + BN +
ReLU stem, a 3x3 stride-2 max pool, four stages of residual blocks (basic for 18/34,
bottleneck for 50/101) whose first block strides and projects the shortcut, then a
global average pool and ``fc``. Module names are timm's (``conv1``, ``bn1``,
``layer1.0.downsample.0``...) so weights convert by renaming leaves only. Any input
size works: the head pools globally.

Initialisation is timm's: convs He-normal over fan-out, torch's default Linear for
``fc``, and the last BN of every block starts at zero (timm's ``zero_init_last``), so
each block starts as its shortcut.
"""
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from tinyvit_jax import normalisation
from tinyvit_jax.models.layers import BatchNorm, Conv, DropPath, drop_path_rates
from tinyvit_jax.models.registry import register_model


def he_normal_fan_out(groups: int = 1) -> Callable:
  """N(0, 2 / fan_out) for an HWIO kernel, fan_out = k*k*cout/groups.

  torch's kaiming_normal_(mode='fan_out') (ResNet) ignores groups; pycls/timm's RegNet
  divides by them. Both agree for dense convs.
  """

  def init(key, shape):
    fan_out = shape[0] * shape[1] * shape[3] // groups
    return jax.random.normal(key, shape, jnp.float32) * (2.0 / fan_out)**0.5

  return init


def conv(cin: int, cout: int, k: int = 1, *, groups: int = 1, **kwargs) -> Conv:
  """A bias-free NHWC conv (timm's ``weight`` as ``kernel``), any groups.

  1x1 and depthwise convs run in ``conv_ops``' formulation (a matmul / shifted
  multiply-adds on CPU under ``'auto'``). Dense k x k and grouped convs (RegNet's) always
  use XLA's convolution: on CPU it matched or beat conv_ops' im2col on these models'
  3x3s (resnet50 forward at 224, batch 8: 0.83 s against 0.88-1.5 s on a shared
  2-core machine) and compiles 2-10x faster.
  """
  own = (k == 1 and groups == 1) or groups == cin
  return Conv(cin, cout, k, groups=groups, impl=None if own else 'xla', **kwargs)


def torch_linear(din: int, dout: int, *, dtype, rngs: nnx.Rngs) -> nnx.Linear:
  """torch's default Linear: weight and bias uniform(+-1/sqrt(din))."""
  bound = din**-0.5
  init = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)
  return nnx.Linear(din, dout, kernel_init=init, bias_init=init, dtype=dtype,
                    param_dtype=jnp.float32, rngs=rngs)


def max_pool_3x3_s2(x):
  """3x3 stride-2 max pool padded by 1 with -inf (torch's MaxPool2d(3, 2, 1))."""
  return nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class BasicBlock(nnx.Module):
  """conv3x3 (strided) + BN + ReLU, conv3x3 + BN (gamma 0), add the shortcut, ReLU."""
  expansion = 1

  def __init__(self, cin: int, planes: int, stride: int, drop_path: float, *, dtype,
               rngs: nnx.Rngs):
    kw = dict(kernel_init=he_normal_fan_out(), dtype=dtype, rngs=rngs)
    self.conv1 = conv(cin, planes, 3, stride=stride, pad=1, **kw)
    self.bn1 = BatchNorm(planes)
    self.conv2 = conv(planes, planes, 3, pad=1, **kw)
    self.bn2 = BatchNorm(planes, scale_init=0.0)
    self.drop_path = DropPath(drop_path, rngs=rngs)
    self.downsample = _shortcut(cin, planes, stride, **kw)

  def __call__(self, x):
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return jax.nn.relu(self.drop_path(y) + _apply_shortcut(self.downsample, x))


class Bottleneck(nnx.Module):
  """1x1 + BN + ReLU, 3x3 (strided) + BN + ReLU, 1x1 to 4x + BN (gamma 0), add, ReLU."""
  expansion = 4

  def __init__(self, cin: int, planes: int, stride: int, drop_path: float, *, dtype,
               rngs: nnx.Rngs):
    kw = dict(kernel_init=he_normal_fan_out(), dtype=dtype, rngs=rngs)
    cout = planes * self.expansion
    self.conv1 = conv(cin, planes, **kw)
    self.bn1 = BatchNorm(planes)
    self.conv2 = conv(planes, planes, 3, stride=stride, pad=1, **kw)
    self.bn2 = BatchNorm(planes)
    self.conv3 = conv(planes, cout, **kw)
    self.bn3 = BatchNorm(cout, scale_init=0.0)
    self.drop_path = DropPath(drop_path, rngs=rngs)
    self.downsample = _shortcut(cin, cout, stride, **kw)

  def __call__(self, x):
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = jax.nn.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return jax.nn.relu(self.drop_path(y) + _apply_shortcut(self.downsample, x))


def _shortcut(cin: int, cout: int, stride: int, **conv_kw):
  """timm's ``downsample``: [1x1 strided conv, BN] where the shape changes, else none."""
  if stride == 1 and cin == cout:
    return nnx.data(None)
  return nnx.List([conv(cin, cout, stride=stride, **conv_kw), BatchNorm(cout)])


def _apply_shortcut(downsample, x):
  if downsample is None:
    return x
  project, norm = downsample
  return norm(project(x))


class ResNet(nnx.Module):
  """timm's default ResNet (no deep stem, no avg-down): stem, 4 stages, pooled ``fc``.

  ``img_size`` is only the nominal input size: any size works.
  """

  def __init__(self, *, block: type, layers: Sequence[int],
               channels: Sequence[int] = (64, 128, 256, 512), num_classes: int = 1000,
               img_size: int = 224, in_chans: int = 3, drop_path_rate: float = 0.0, dtype=None,
               rngs: nnx.Rngs):
    self.num_classes = num_classes
    self.img_size = img_size
    self.conv1 = conv(in_chans, 64, 7, stride=2, pad=3, kernel_init=he_normal_fan_out(),
                      dtype=dtype, rngs=rngs)
    self.bn1 = BatchNorm(64)
    dpr = iter(drop_path_rates(drop_path_rate, sum(layers)))
    cin = 64
    for s, (depth, planes) in enumerate(zip(layers, channels)):
      blocks = []
      for i in range(depth):
        stride = 2 if s > 0 and i == 0 else 1
        blocks.append(block(cin, planes, stride, next(dpr), dtype=dtype, rngs=rngs))
        cin = planes * block.expansion
      setattr(self, f'layer{s + 1}', nnx.List(blocks))
    self.num_stages = len(layers)
    self.num_features = cin
    self.fc = torch_linear(cin, num_classes, dtype=dtype, rngs=rngs)

  def forward_features(self, x):
    x = max_pool_3x3_s2(jax.nn.relu(self.bn1(self.conv1(x))))
    for s in range(self.num_stages):
      for block in getattr(self, f'layer{s + 1}'):
        x = block(x)
    return x

  def __call__(self, x):
    return self.fc(jnp.mean(self.forward_features(x), axis=(1, 2)))


# timm's default tags for these names (a1_in1k): 224 train size, crop 0.95.
_CFG = dict(input_size=224, crop_pct=0.95, mean=normalisation.IMAGENET_MEAN,
            std=normalisation.IMAGENET_STD)


@register_model(**_CFG)
def resnet18(**kwargs):
  return ResNet(block=BasicBlock, layers=(2, 2, 2, 2), **kwargs)


@register_model(**_CFG)
def resnet34(**kwargs):
  return ResNet(block=BasicBlock, layers=(3, 4, 6, 3), **kwargs)


@register_model(**_CFG)
def resnet50(**kwargs):
  return ResNet(block=Bottleneck, layers=(3, 4, 6, 3), **kwargs)
