"""DeiT (Touvron et al., 2021, arXiv:2012.12877) in Flax NNX, NHWC.

A plain ViT with patch 16, plus, for the ``_distilled_`` variants, a distillation
token read by its own head. Token order is [cls, dist, patches]. In training mode a
distilled model returns both heads' logits; in eval mode their mean. Module names
match timm's ``vision_transformer.py`` / ``deit.py``.
"""
import jax.numpy as jnp
from flax import nnx

from tinyvit_jax import normalisation
from tinyvit_jax.models import layers
from tinyvit_jax.models.attention import attend
from tinyvit_jax.models.layers import DropPath, gelu
from tinyvit_jax.models.registry import register_model


class PatchProj(nnx.Module):
  """The 16x16 stride-16 patch conv, computed as reshape + matmul (kernel kept HWIO)."""

  def __init__(self, patch: int, cin: int, dim: int, *, dtype, rngs: nnx.Rngs):
    self.patch = patch
    self.dtype = dtype
    self.kernel = nnx.Param(layers.conv_kernel_init(rngs.params(), (patch, patch, cin, dim)))
    bound = 1.0 / (patch * patch * cin) ** 0.5
    self.bias = nnx.Param(nnx.initializers.uniform(2 * bound)(rngs.params(), (dim,)) - bound)

  def __call__(self, x):
    b, h, w, c = x.shape
    p = self.patch
    if h % p or w % p:
      raise ValueError(f'Input {h}x{w} is not a multiple of the patch size {p}.')
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, (h // p) * (w // p), p * p * c)
    kernel, bias = self.kernel[...].reshape(p * p * c, -1), self.bias[...]
    if self.dtype is not None:
      x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
    return x @ kernel + bias


class PatchEmbed(nnx.Module):

  def __init__(self, patch: int, cin: int, dim: int, *, dtype, rngs: nnx.Rngs):
    self.proj = PatchProj(patch, cin, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.proj(x)


class Attention(nnx.Module):

  def __init__(self, dim: int, num_heads: int, *, dtype, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.qkv = layers.linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
    self.proj = layers.linear(dim, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    b, n, c = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)  # timm's layout
    out = attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])  # softmax(q kᵀ / sqrt(hd)) v
    return self.proj(out.reshape(b, n, c))


class Mlp(nnx.Module):

  def __init__(self, dim: int, hidden: int, *, dtype, rngs: nnx.Rngs):
    self.fc1 = layers.linear(dim, hidden, dtype=dtype, rngs=rngs)
    self.fc2 = layers.linear(hidden, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.fc2(gelu(self.fc1(x)))


class Block(nnx.Module):
  """Pre-norm transformer block: x + DP(attn(LN(x))), x + DP(mlp(LN(x))); LN eps 1e-6."""

  def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float, *, dtype,
               rngs: nnx.Rngs):
    self.norm1 = layers.layer_norm(dim, eps=1e-6, dtype=dtype, rngs=rngs)
    self.attn = Attention(dim, num_heads, dtype=dtype, rngs=rngs)
    self.drop_path1 = DropPath(drop_path, rngs=rngs)
    self.norm2 = layers.layer_norm(dim, eps=1e-6, dtype=dtype, rngs=rngs)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)
    self.drop_path2 = DropPath(drop_path, rngs=rngs)

  def __call__(self, x):
    x = x + self.drop_path1(self.attn(self.norm1(x)))
    return x + self.drop_path2(self.mlp(self.norm2(x)))


class DeiT(nnx.Module):
  """ViT with a class token and, if ``distilled``, a distillation token and ``head_dist``.

  ``deterministic`` is the train/eval switch that ``model.train()`` / ``model.eval()``
  set: a distilled model returns ``(cls_logits, dist_logits)`` while training and their
  mean in eval mode.
  """

  def __init__(self, *, embed_dim: int, depth: int, num_heads: int, distilled: bool,
               num_classes: int = 1000, img_size: int = 224, patch_size: int = 16,
               in_chans: int = 3, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0,
               dtype=None, rngs: nnx.Rngs):
    if img_size % patch_size:
      raise ValueError(f'img_size={img_size} is not a multiple of patch_size={patch_size}.')
    self.num_classes = num_classes
    self.img_size = img_size
    self.distilled = distilled
    self.deterministic = False
    self.num_features = embed_dim
    num_prefix = 2 if distilled else 1
    num_patches = (img_size // patch_size) ** 2
    init = layers.trunc_normal_02
    self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, dtype=dtype, rngs=rngs)
    self.cls_token = nnx.Param(init(rngs.params(), (1, 1, embed_dim)))
    if distilled:
      self.dist_token = nnx.Param(init(rngs.params(), (1, 1, embed_dim)))
    self.pos_embed = nnx.Param(init(rngs.params(), (1, num_patches + num_prefix, embed_dim)))
    dpr = layers.drop_path_rates(drop_path_rate, depth)
    self.blocks = nnx.List([Block(embed_dim, num_heads, mlp_ratio, dp, dtype=dtype, rngs=rngs)
                            for dp in dpr])
    self.norm = layers.layer_norm(embed_dim, eps=1e-6, dtype=dtype, rngs=rngs)
    self.head = layers.linear(embed_dim, num_classes, dtype=dtype, rngs=rngs)
    if distilled:
      self.head_dist = layers.linear(embed_dim, num_classes, dtype=dtype, rngs=rngs)

  def forward_features(self, x):
    x = self.patch_embed(x)
    b = x.shape[0]
    tokens = [self.cls_token[...]] + ([self.dist_token[...]] if self.distilled else [])
    tokens = [jnp.broadcast_to(t, (b, 1, t.shape[-1])).astype(x.dtype) for t in tokens]
    pos_embed = self.pos_embed[...]
    if x.shape[1] + len(tokens) != pos_embed.shape[1]:
      raise ValueError(f'Input gives {x.shape[1]} patches but pos_embed was built for '
                       f'{pos_embed.shape[1] - len(tokens)} (img_size={self.img_size}); '
                       'create the model with the img_size you feed it.')
    x = jnp.concatenate(tokens + [x], axis=1) + pos_embed.astype(x.dtype)
    for block in self.blocks:
      x = block(x)
    return self.norm(x)

  def __call__(self, x):
    x = self.forward_features(x)
    logits = self.head(x[:, 0])
    if not self.distilled:
      return logits
    logits_dist = self.head_dist(x[:, 1])
    if self.deterministic:
      return (logits + logits_dist) / 2
    return logits, logits_dist


_CFG = dict(mean=normalisation.IMAGENET_MEAN, std=normalisation.IMAGENET_STD)
_SIZES = {'tiny': (192, 3), 'small': (384, 6), 'base': (768, 12)}


def _deit(size: str, distilled: bool, default_size: int, **overrides):
  dim, heads = _SIZES[size]
  kwargs = dict(embed_dim=dim, depth=12, num_heads=heads, distilled=distilled,
                img_size=default_size)
  kwargs.update(overrides)
  return DeiT(**kwargs)


def _register(size: str, distilled: bool, img_size: int):
  name = f'deit_{size}_{"distilled_" if distilled else ""}patch16_{img_size}'

  def constructor(**kwargs):
    return _deit(size, distilled, img_size, **kwargs)

  constructor.__name__ = name
  crop_pct = 0.875 if img_size == 224 else 1.0
  return register_model(input_size=img_size, crop_pct=crop_pct, **_CFG)(constructor)


for _size in _SIZES:
  for _distilled in (False, True):
    for _img_size in (224, 384):
      _register(_size, _distilled, _img_size)
