"""RegNetY (Radosavovic et al., 2020, arXiv:2003.13678) in Flax NNX, NHWC.

RegNetY-16GF (``regnety_160``) is the convnet teacher of DeiT. Reads top to bottom as
timm's ``regnet.py``: a 3x3 stride-2 stem, four stages ``s1``..``s4`` of Y blocks
``b1``, ``b2``... (1x1, grouped 3x3 with the stage's stride, squeeze-excitation, 1x1,
plus a projected shortcut where the shape changes), then a pooled ``head.fc``. Module
names are timm's, so weights convert by renaming leaves only. Any input size works.

Stage widths and depths come from the RegNet rule (``stage_layout``): block j has width
``w0 * wm^round(log((w0 + wa*j) / w0) / log(wm))`` rounded to a multiple of 8; equal
widths form a stage, and each width is rounded to a multiple of the group width.

Initialisation is pycls/timm's: convs N(0, 2/fan_out) with fan_out divided by the
groups, Linears N(0, 0.01) with zero bias, and the last BN of every block at zero.
"""
import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tinyvit_jax import normalisation
from tinyvit_jax.models.layers import BatchNorm, DropPath, drop_path_rates
from tinyvit_jax.models.registry import register_model
from tinyvit_jax.models.resnet import conv, he_normal_fan_out


@dataclasses.dataclass(frozen=True)
class RegNetCfg:
  """The RegNet design space parameters of one model (the paper's Table / pycls)."""
  depth: int
  w0: int
  wa: float
  wm: float
  group_size: int
  se_ratio: float = 0.25
  stem_width: int = 32


def stage_layout(cfg: RegNetCfg) -> list[tuple[int, int, int]]:
  """(width, depth, group_size) per stage, computed in float32 as timm/pycls do."""
  j = np.arange(cfg.depth, dtype=np.float32)
  w0, wa, wm = np.float32(cfg.w0), np.float32(cfg.wa), np.float32(cfg.wm)
  exps = np.round(np.log((j * wa + w0) / w0) / np.float32(np.log(cfg.wm)))
  widths = (np.round(w0 * np.power(wm, exps) / 8) * 8).astype(int)
  stage_widths, depths = np.unique(widths, return_counts=True)
  layout = []
  for width, depth in zip(stage_widths.tolist(), depths.tolist()):
    group = min(cfg.group_size, width)
    layout.append((int(round(width / group) * group), depth, group))
  return layout


class ConvNormAct(nnx.Module):
  """Bias-free conv (``conv``), BatchNorm (``bn``) and optionally ReLU (timm's names)."""

  def __init__(self, cin: int, cout: int, k: int = 1, *, stride: int = 1, groups: int = 1,
               act: bool = True, bn_weight_init: float = 1.0, dtype, rngs: nnx.Rngs):
    # timm pads symmetrically by ((stride - 1) + (k - 1)) // 2: k // 2 for k in {1, 3}.
    self.conv = conv(cin, cout, k, stride=stride, pad=k // 2, groups=groups,
                     kernel_init=he_normal_fan_out(groups), dtype=dtype, rngs=rngs)
    self.bn = BatchNorm(cout, scale_init=bn_weight_init)
    self.act = act

  def __call__(self, x):
    x = self.bn(self.conv(x))
    return jax.nn.relu(x) if self.act else x


class PointwiseBias(nnx.Module):
  """A 1x1 conv with bias on pooled (B, C) features; kernel kept HWIO (1, 1, in, out)."""

  def __init__(self, cin: int, cout: int, *, dtype, rngs: nnx.Rngs):
    self.kernel = nnx.Param(he_normal_fan_out()(rngs.params(), (1, 1, cin, cout)))
    self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))
    self.dtype = dtype

  def __call__(self, x):
    kernel, bias = self.kernel[...][0, 0], self.bias[...]
    if self.dtype is not None:
      x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
    return x @ kernel + bias


class SqueezeExcite(nnx.Module):
  """Global mean, 1x1 down (``fc1``), ReLU, 1x1 up (``fc2``), sigmoid gate on the input."""

  def __init__(self, channels: int, reduced: int, *, dtype, rngs: nnx.Rngs):
    self.fc1 = PointwiseBias(channels, reduced, dtype=dtype, rngs=rngs)
    self.fc2 = PointwiseBias(reduced, channels, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    gate = jax.nn.sigmoid(self.fc2(jax.nn.relu(self.fc1(jnp.mean(x, axis=(1, 2))))))
    return x * gate[:, None, None, :].astype(x.dtype)


class Bottleneck(nnx.Module):
  """RegNetY block: 1x1, grouped 3x3 (strided), SE, 1x1 (BN gamma 0); + shortcut; ReLU.

  The SE's reduced width is ``round(se_ratio * cin)`` from the block's *input* width.
  """

  def __init__(self, cin: int, cout: int, stride: int, group_size: int, se_ratio: float,
               drop_path: float, *, dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.conv1 = ConvNormAct(cin, cout, **kw)
    self.conv2 = ConvNormAct(cout, cout, 3, stride=stride, groups=cout // group_size, **kw)
    self.se = SqueezeExcite(cout, int(round(cin * se_ratio)), dtype=dtype, rngs=rngs)
    self.conv3 = ConvNormAct(cout, cout, act=False, bn_weight_init=0.0, **kw)
    self.drop_path = DropPath(drop_path, rngs=rngs)
    if stride != 1 or cin != cout:
      self.downsample = ConvNormAct(cin, cout, stride=stride, act=False, **kw)
    else:
      self.downsample = nnx.data(None)

  def __call__(self, x):
    y = self.conv3(self.se(self.conv2(self.conv1(x))))
    shortcut = x if self.downsample is None else self.downsample(x)
    return jax.nn.relu(self.drop_path(y) + shortcut)


class RegStage(nnx.Module):
  """Blocks ``b1``..``bN``; the first one strides and changes the width."""

  def __init__(self, cin: int, cout: int, depth: int, group_size: int, se_ratio: float,
               drop_paths: Sequence[float], *, dtype, rngs: nnx.Rngs):
    self.depth = depth
    for i in range(depth):
      setattr(
          self, f'b{i + 1}',
          Bottleneck(cin if i == 0 else cout, cout, 2 if i == 0 else 1, group_size, se_ratio,
                     drop_paths[i], dtype=dtype, rngs=rngs))

  def __call__(self, x):
    for i in range(self.depth):
      x = getattr(self, f'b{i + 1}')(x)
    return x


class Head(nnx.Module):
  """Global average pool, then ``fc`` (timm's ClassifierHead)."""

  def __init__(self, dim: int, num_classes: int, *, dtype, rngs: nnx.Rngs):
    self.fc = nnx.Linear(dim, num_classes, kernel_init=nnx.initializers.normal(0.01),
                         bias_init=nnx.initializers.zeros_init(), dtype=dtype,
                         param_dtype=jnp.float32, rngs=rngs)

  def __call__(self, x):
    return self.fc(jnp.mean(x, axis=(1, 2)))


class RegNet(nnx.Module):
  """RegNetY: stem, stages ``s1``..``s4``, head. ``img_size`` is nominal: any size works."""

  def __init__(self, cfg: RegNetCfg, *, num_classes: int = 1000, img_size: int = 224,
               in_chans: int = 3, drop_path_rate: float = 0.0, dtype=None, rngs: nnx.Rngs):
    self.num_classes = num_classes
    self.img_size = img_size
    kw = dict(dtype=dtype, rngs=rngs)
    self.stem = ConvNormAct(in_chans, cfg.stem_width, 3, stride=2, **kw)
    layout = stage_layout(cfg)
    dpr = drop_path_rates(drop_path_rate, sum(depth for _, depth, _ in layout))
    cin, start = cfg.stem_width, 0
    for s, (width, depth, group) in enumerate(layout):
      setattr(self, f's{s + 1}',
              RegStage(cin, width, depth, group, cfg.se_ratio, dpr[start:start + depth], **kw))
      cin, start = width, start + depth
    self.num_stages = len(layout)
    self.num_features = cin
    self.head = Head(cin, num_classes, dtype=dtype, rngs=rngs)

  def forward_features(self, x):
    x = self.stem(x)
    for s in range(self.num_stages):
      x = getattr(self, f's{s + 1}')(x)
    return x

  def __call__(self, x):
    return self.head(self.forward_features(x))


_MEAN_STD = dict(mean=normalisation.IMAGENET_MEAN, std=normalisation.IMAGENET_STD)


# timm's default tag: tv2_in1k (torchvision recipe), crop 0.965.
@register_model(input_size=224, crop_pct=0.965, **_MEAN_STD)
def regnety_016(**kwargs):
  return RegNet(RegNetCfg(depth=27, w0=48, wa=20.71, wm=2.65, group_size=24), **kwargs)


# timm's default tag: sw_in12k_ft_in1k, crop 0.95; DeiT's teacher is its deit_in1k tag.
@register_model(input_size=224, crop_pct=0.95, **_MEAN_STD)
def regnety_160(**kwargs):
  return RegNet(RegNetCfg(depth=18, w0=200, wa=106.23, wm=2.48, group_size=112), **kwargs)
