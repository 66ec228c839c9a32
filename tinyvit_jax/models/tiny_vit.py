"""TinyViT (Wu et al., 2022, arXiv:2207.10666) in Flax NNX, NHWC.

Reads top to bottom as the architecture: conv stem, an MBConv stage, then three stages
of patch merging + window-attention blocks, then a pooled LayerNorm head. Module names
match timm's ``tiny_vit.py`` so weights convert by renaming leaves only.
"""
import functools
from typing import Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from tinyvit_jax import normalisation
from tinyvit_jax.models import layers
from tinyvit_jax.models.attention import attend
from tinyvit_jax.models.layers import ConvNorm, DropPath, gelu
from tinyvit_jax.models.registry import register_model


class PatchEmbed(nnx.Module):
  """conv3x3 s2 (C/2), GELU, conv3x3 s2 (C): the image enters at 1/4 resolution."""

  def __init__(self, cin: int, cout: int, *, dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.conv1 = ConvNorm(cin, cout // 2, k=3, stride=2, pad=1, **kw)
    self.conv2 = ConvNorm(cout // 2, cout, k=3, stride=2, pad=1, **kw)

  def __call__(self, x):
    return self.conv2(gelu(self.conv1(x)))


class MBConv(nnx.Module):
  """Inverted residual: 1x1 (4C), GELU, dw3x3, GELU, 1x1 (C, BN weight 0), add, GELU."""

  def __init__(self, dim: int, expand_ratio: float, drop_path: float, *, dtype, rngs: nnx.Rngs):
    mid = int(dim * expand_ratio)
    kw = dict(dtype=dtype, rngs=rngs)
    self.conv1 = ConvNorm(dim, mid, **kw)
    self.conv2 = ConvNorm(mid, mid, k=3, pad=1, groups=mid, **kw)
    self.conv3 = ConvNorm(mid, dim, bn_weight_init=0.0, **kw)
    self.drop_path = DropPath(drop_path, rngs=rngs)

  def __call__(self, x):
    y = gelu(self.conv2(gelu(self.conv1(x))))
    return gelu(x + self.drop_path(self.conv3(y)))


class ConvStage(nnx.Module):
  """Stage 0: MBConv blocks at the stem's resolution (timm's ``ConvLayer``)."""

  def __init__(self, dim: int, drop_paths: Sequence[float], expand_ratio: float, *, dtype,
               rngs: nnx.Rngs):
    self.blocks = nnx.List(
        [MBConv(dim, expand_ratio, dp, dtype=dtype, rngs=rngs) for dp in drop_paths])

  def __call__(self, x):
    for block in self.blocks:
      x = block(x)
    return x


class PatchMerging(nnx.Module):
  """1x1, GELU, dw3x3 stride 2, GELU, 1x1; halves the resolution, no residual."""

  def __init__(self, dim: int, out_dim: int, *, dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.conv1 = ConvNorm(dim, out_dim, **kw)
    self.conv2 = ConvNorm(out_dim, out_dim, k=3, stride=2, pad=1, groups=out_dim, **kw)
    self.conv3 = ConvNorm(out_dim, out_dim, **kw)

  def __call__(self, x):
    return self.conv3(gelu(self.conv2(gelu(self.conv1(x)))))


@functools.lru_cache(maxsize=None)
def attention_bias_index(window_size: int) -> np.ndarray:
  """(N, N) index into a head's bias table: |dy| * ws + |dx| for each pair of points."""
  ys, xs = np.divmod(np.arange(window_size * window_size), window_size)
  return np.abs(ys[:, None] - ys[None]) * window_size + np.abs(xs[:, None] - xs[None])


class Attention(nnx.Module):
  """Multi-head self-attention inside one window, LayerNorm first, with a learned bias
  per head and per (|dy|, |dx|) offset between the two points."""

  def __init__(self, dim: int, num_heads: int, window_size: int, *, dtype, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.head_dim = dim // num_heads
    self.window_size = window_size
    self.norm = layers.layer_norm(dim, eps=1e-5, dtype=dtype, rngs=rngs)
    self.qkv = layers.linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
    self.proj = layers.linear(dim, dim, dtype=dtype, rngs=rngs)
    self.attention_biases = nnx.Param(jnp.zeros((num_heads, window_size**2), jnp.float32))

  def __call__(self, x):
    b, n, _ = x.shape
    # Per head the qkv features are [q | k | v], as timm's view + split.
    qkv = self.qkv(self.norm(x)).reshape(b, n, self.num_heads, 3, self.head_dim)
    q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
    bias = self.attention_biases[...][:, attention_bias_index(self.window_size)]
    out = attend(q, k, v, bias)  # softmax(q kᵀ / sqrt(hd) + bias) v
    return self.proj(out.reshape(b, n, -1))


class NormMlp(nnx.Module):
  """LN, fc1 (ratio x C), GELU, fc2."""

  def __init__(self, dim: int, hidden: int, *, dtype, rngs: nnx.Rngs):
    self.norm = layers.layer_norm(dim, eps=1e-5, dtype=dtype, rngs=rngs)
    self.fc1 = layers.linear(dim, hidden, dtype=dtype, rngs=rngs)
    self.fc2 = layers.linear(hidden, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.fc2(gelu(self.fc1(self.norm(x))))


def window_partition(x, ws: int):
  """(B, H, W, C) -> (B * nH * nW, ws * ws, C), zero-padding H and W up to multiples
  of ws. Padded tokens take part in attention unmasked, as in timm and Cream."""
  b, h, w, c = x.shape
  pad_h, pad_w = -h % ws, -w % ws
  if pad_h or pad_w:
    x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
  nh, nw = (h + pad_h) // ws, (w + pad_w) // ws
  x = x.reshape(b, nh, ws, nw, ws, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b * nh * nw, ws * ws, c)


def window_reverse(x, ws: int, b: int, h: int, w: int):
  """Inverse of window_partition, cropping the padding away."""
  nh, nw = -(-h // ws), -(-w // ws)
  x = x.reshape(b, nh, nw, ws, ws, -1).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, nh * ws, nw * ws, -1)[:, :h, :w]


class TinyVitBlock(nnx.Module):
  """x + DP(window attention(x)); local dw3x3 conv + BN; x + DP(mlp(x))."""

  def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, drop_path: float,
               *, dtype, rngs: nnx.Rngs):
    self.window_size = window_size
    self.attn = Attention(dim, num_heads, window_size, dtype=dtype, rngs=rngs)
    self.drop_path1 = DropPath(drop_path, rngs=rngs)
    self.local_conv = ConvNorm(dim, dim, k=3, pad=1, groups=dim, dtype=dtype, rngs=rngs)
    self.mlp = NormMlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)
    self.drop_path2 = DropPath(drop_path, rngs=rngs)

  def __call__(self, x):
    b, h, w, c = x.shape
    ws = self.window_size
    attn = window_reverse(self.attn(window_partition(x, ws)), ws, b, h, w)
    x = x + self.drop_path1(attn)
    x = self.local_conv(x)
    return x + self.drop_path2(self.mlp(x))


class TinyVitStage(nnx.Module):
  """Patch merging from the previous stage's width, then TinyViT blocks."""

  def __init__(self, dim: int, out_dim: int, num_heads: int, window_size: int, mlp_ratio: float,
               drop_paths: Sequence[float], *, dtype, rngs: nnx.Rngs):
    self.downsample = PatchMerging(dim, out_dim, dtype=dtype, rngs=rngs)
    self.blocks = nnx.List([
        TinyVitBlock(out_dim, num_heads, window_size, mlp_ratio, dp, dtype=dtype, rngs=rngs)
        for dp in drop_paths
    ])

  def __call__(self, x):
    x = self.downsample(x)
    for block in self.blocks:
      x = block(x)
    return x


class ClassifierHead(nnx.Module):
  """Global average pool, LayerNorm (eps 1e-5), Linear."""

  def __init__(self, dim: int, num_classes: int, *, dtype, rngs: nnx.Rngs):
    self.norm = layers.layer_norm(dim, eps=1e-5, dtype=dtype, rngs=rngs)
    self.fc = layers.linear(dim, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.fc(self.norm(jnp.mean(x, axis=(1, 2))))


class TinyVit(nnx.Module):
  """TinyViT. Input NHWC images of any size; windows that do not tile are padded."""

  def __init__(self, *, embed_dims: Sequence[int], num_heads: Sequence[int],
               window_sizes: Sequence[int], depths: Sequence[int] = (2, 2, 6, 2),
               num_classes: int = 1000, img_size: int = 224, in_chans: int = 3,
               mlp_ratio: float = 4.0, mbconv_expand_ratio: float = 4.0,
               drop_path_rate: float = 0.0, dtype=None, rngs: nnx.Rngs):
    if not (len(embed_dims) == len(num_heads) == len(window_sizes) == len(depths)):
      raise ValueError('embed_dims, num_heads, window_sizes and depths need one entry per '
                       f'stage; got {embed_dims}, {num_heads}, {window_sizes}, {depths}.')
    self.num_classes = num_classes
    self.img_size = img_size
    self.window_sizes = tuple(window_sizes)
    self.num_features = embed_dims[-1]
    kw = dict(dtype=dtype, rngs=rngs)
    self.patch_embed = PatchEmbed(in_chans, embed_dims[0], **kw)
    dpr = layers.drop_path_rates(drop_path_rate, sum(depths))
    starts = np.cumsum([0, *depths])
    stages = [ConvStage(embed_dims[0], dpr[:depths[0]], mbconv_expand_ratio, **kw)]
    for s in range(1, len(depths)):
      stages.append(
          TinyVitStage(embed_dims[s - 1], embed_dims[s], num_heads[s], window_sizes[s], mlp_ratio,
                       dpr[starts[s]:starts[s + 1]], **kw))
    self.stages = nnx.List(stages)
    self.head = ClassifierHead(embed_dims[-1], num_classes, dtype=dtype, rngs=rngs)

  def forward_features(self, x):
    x = self.patch_embed(x)
    for stage in self.stages:
      x = stage(x)
    return x

  def __call__(self, x):
    return self.head(self.forward_features(x))


_WINDOWS = {224: (7, 7, 14, 7), 384: (12, 12, 24, 12), 512: (16, 16, 32, 16)}


def _tiny_vit(model_args: dict, kwargs: dict) -> TinyVit:
  """TinyVit of ``dict(model_args, **kwargs)``, as timm: the caller's ``kwargs`` win. An
  ``img_size`` of 224, 384 or 512 takes the paper's windows for that size; any other
  keeps the variant's own and pads where they do not tile."""
  args = dict(model_args, **kwargs)
  windows = _WINDOWS.get(args['img_size'], _WINDOWS[model_args['img_size']])
  return TinyVit(**{'window_sizes': windows, **args})


_CFG = dict(mean=normalisation.IMAGENET_MEAN, std=normalisation.IMAGENET_STD)


@register_model(input_size=224, crop_pct=0.95, **_CFG)
def tiny_vit_5m_224(**kwargs):
  model_args = dict(embed_dims=(64, 128, 160, 320), depths=(2, 2, 6, 2), num_heads=(2, 4, 5, 10),
                    img_size=224, drop_path_rate=0.0)
  return _tiny_vit(model_args, kwargs)


@register_model(input_size=224, crop_pct=0.95, **_CFG)
def tiny_vit_11m_224(**kwargs):
  model_args = dict(embed_dims=(64, 128, 256, 448), depths=(2, 2, 6, 2), num_heads=(2, 4, 8, 14),
                    img_size=224, drop_path_rate=0.1)
  return _tiny_vit(model_args, kwargs)


@register_model(input_size=224, crop_pct=0.95, **_CFG)
def tiny_vit_21m_224(**kwargs):
  model_args = dict(embed_dims=(96, 192, 384, 576), depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 18),
                    img_size=224, drop_path_rate=0.2)
  return _tiny_vit(model_args, kwargs)


@register_model(input_size=384, crop_pct=1.0, **_CFG)
def tiny_vit_21m_384(**kwargs):
  model_args = dict(embed_dims=(96, 192, 384, 576), depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 18),
                    img_size=384, drop_path_rate=0.1)
  return _tiny_vit(model_args, kwargs)


@register_model(input_size=512, crop_pct=1.0, **_CFG)
def tiny_vit_21m_512(**kwargs):
  model_args = dict(embed_dims=(96, 192, 384, 576), depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 18),
                    img_size=512, drop_path_rate=0.1)
  return _tiny_vit(model_args, kwargs)
