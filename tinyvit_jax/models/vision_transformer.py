"""Vision Transformer (Dosovitskiy et al., 2021, arXiv:2010.11929) in Flax NNX, NHWC.

timm's ``VisionTransformer`` with the options the teachers use: patch 14/16/32, a class
token or none, ``'token'`` or ``'avg'`` pooling, CLIP's ``norm_pre`` and bias-free patch
conv, ``fc_norm``, QuickGELU or exact GELU, LayerScale (``ls1``/``ls2``), and DeiT's
distillation token (``distilled``: tokens [cls, dist, patches], ``head_dist``). Module
names are timm's, so a state path maps onto timm's state_dict key by its leaf alone.

Cream's CLIP teacher (``clip_vit_large14_224``) is OpenAI's visual tower with its
bias-free ``proj`` to 768 kept as a layer of its own before the ``head``
(``proj_dim``). DeiT's names are registered in ``deit.py``.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tinyvit_jax import normalisation
from tinyvit_jax.models import layers
from tinyvit_jax.models.attention import attend
from tinyvit_jax.models.layers import DropPath
from tinyvit_jax.models.registry import register_model

_ACTIVATIONS = {'gelu': layers.gelu, 'quick_gelu': layers.quick_gelu}


class PatchProj(nnx.Module):
  """The stride-``patch`` patch conv, computed as reshape + matmul (kernel kept HWIO)."""

  def __init__(self, patch: int, cin: int, dim: int, *, use_bias: bool, dtype, rngs: nnx.Rngs):
    self.patch = patch
    self.dtype = dtype
    self.kernel = nnx.Param(layers.conv_kernel_init(rngs.params(), (patch, patch, cin, dim)))
    if use_bias:
      bound = 1.0 / (patch * patch * cin)**0.5
      self.bias = nnx.Param(nnx.initializers.uniform(2 * bound)(rngs.params(), (dim,)) - bound)
    else:
      self.bias = None

  def __call__(self, x):
    b, h, w, c = x.shape
    p = self.patch
    if h % p or w % p:
      raise ValueError(f'Input {h}x{w} is not a multiple of the patch size {p}.')
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, (h // p) * (w // p), p * p * c)
    kernel = self.kernel[...].reshape(p * p * c, -1)
    if self.dtype is not None:
      x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    x = x @ kernel
    return x if self.bias is None else x + self.bias[...].astype(x.dtype)


class PatchEmbed(nnx.Module):

  def __init__(self, patch: int, cin: int, dim: int, *, use_bias: bool, dtype, rngs: nnx.Rngs):
    self.proj = PatchProj(patch, cin, dim, use_bias=use_bias, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.proj(x)


class Attention(nnx.Module):

  def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool, dtype, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.qkv = layers.linear(dim, 3 * dim, use_bias=qkv_bias, dtype=dtype, rngs=rngs)
    self.proj = layers.linear(dim, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    b, n, c = x.shape
    # timm's layout, and torch MultiheadAttention's in_proj (q, k, v; heads contiguous).
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
    out = attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])  # softmax(q kᵀ / sqrt(hd)) v
    return self.proj(out.reshape(b, n, c))


class Mlp(nnx.Module):

  def __init__(self, dim: int, hidden: int, *, act: str, dtype, rngs: nnx.Rngs):
    self.act = act
    self.fc1 = layers.linear(dim, hidden, dtype=dtype, rngs=rngs)
    self.fc2 = layers.linear(hidden, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.fc2(_ACTIVATIONS[self.act](self.fc1(x)))


class LayerScale(nnx.Module):
  """Per-channel scale of a residual branch (CaiT, DeiT III); timm names it ``gamma``."""

  def __init__(self, dim: int, init_values: float):
    self.gamma = nnx.Param(jnp.full((dim,), init_values, jnp.float32))

  def __call__(self, x):
    return x * self.gamma[...].astype(x.dtype)


class Block(nnx.Module):
  """Pre-norm transformer block: x + DP(ls1(attn(LN(x)))), x + DP(ls2(mlp(LN(x))))."""

  def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float, qkv_bias: bool,
               init_values: float | None, act: str, norm_eps: float, drop_path: float, dtype,
               rngs: nnx.Rngs):
    self.norm1 = layers.layer_norm(dim, eps=norm_eps, dtype=dtype, rngs=rngs)
    self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, dtype=dtype, rngs=rngs)
    self.ls1 = LayerScale(dim, init_values) if init_values else None
    self.drop_path1 = DropPath(drop_path, rngs=rngs)
    self.norm2 = layers.layer_norm(dim, eps=norm_eps, dtype=dtype, rngs=rngs)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), act=act, dtype=dtype, rngs=rngs)
    self.ls2 = LayerScale(dim, init_values) if init_values else None
    self.drop_path2 = DropPath(drop_path, rngs=rngs)

  def __call__(self, x):
    y = self.attn(self.norm1(x))
    x = x + self.drop_path1(y if self.ls1 is None else self.ls1(y))
    y = self.mlp(self.norm2(x))
    return x + self.drop_path2(y if self.ls2 is None else self.ls2(y))


class VisionTransformer(nnx.Module):
  """timm's ViT. ``fc_norm=None`` puts the final norm after the pooling when pooling is
  ``'avg'``, before it otherwise, as timm. ``pre_norm`` (CLIP) adds ``norm_pre`` and
  drops the patch conv's bias.

  ``deterministic`` is the train/eval switch that ``model.train()`` / ``model.eval()``
  set: a ``distilled`` model returns ``(cls_logits, dist_logits)`` while training and
  their mean in eval mode.
  """

  def __init__(self, *, embed_dim: int, depth: int, num_heads: int, num_classes: int = 1000,
               img_size: int = 224, patch_size: int = 16, in_chans: int = 3, mlp_ratio: float = 4.0,
               qkv_bias: bool = True, init_values: float | None = None, class_token: bool = True,
               distilled: bool = False, global_pool: str = 'token', fc_norm: bool | None = None,
               pre_norm: bool = False, act: str = 'gelu', norm_eps: float = 1e-6,
               proj_dim: int | None = None, drop_path_rate: float = 0.0, dtype=None,
               rngs: nnx.Rngs):
    if img_size % patch_size:
      raise ValueError(f'img_size={img_size} is not a multiple of patch_size={patch_size}.')
    if global_pool not in ('token', 'avg'):
      raise ValueError(f"global_pool={global_pool!r}; expected 'token' or 'avg'.")
    if global_pool == 'token' and not class_token:
      raise ValueError("global_pool='token' needs the class token (class_token=True).")
    if distilled and (global_pool != 'token' or proj_dim):
      raise ValueError("A distilled ViT reads its class and distillation tokens: "
                       "global_pool='token' and no proj_dim.")
    if act not in _ACTIVATIONS:
      raise ValueError(f'act={act!r}; expected one of {sorted(_ACTIVATIONS)}.')
    use_fc_norm = global_pool == 'avg' if fc_norm is None else fc_norm
    self.num_classes = num_classes
    self.img_size = img_size
    self.grid_size = img_size // patch_size
    self.distilled = distilled
    self.global_pool = global_pool
    self.deterministic = False
    self.num_features = proj_dim or embed_dim
    self.num_prefix_tokens = int(class_token) + int(distilled)
    init = layers.trunc_normal_02
    norm = lambda: layers.layer_norm(embed_dim, eps=norm_eps, dtype=dtype, rngs=rngs)
    self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, use_bias=not pre_norm,
                                  dtype=dtype, rngs=rngs)
    self.cls_token = nnx.Param(init(rngs.params(), (1, 1, embed_dim))) if class_token else None
    self.dist_token = nnx.Param(init(rngs.params(), (1, 1, embed_dim))) if distilled else None
    self.pos_embed = nnx.Param(
        init(rngs.params(), (1, self.grid_size**2 + self.num_prefix_tokens, embed_dim)))
    self.norm_pre = norm() if pre_norm else None
    self.blocks = nnx.List([
        Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, init_values=init_values,
              act=act, norm_eps=norm_eps, drop_path=dp, dtype=dtype, rngs=rngs)
        for dp in layers.drop_path_rates(drop_path_rate, depth)
    ])
    self.norm = None if use_fc_norm else norm()
    self.fc_norm = norm() if use_fc_norm else None
    self.proj = (layers.linear(embed_dim, proj_dim, use_bias=False, dtype=dtype, rngs=rngs)
                 if proj_dim else None)
    self.head = layers.linear(self.num_features, num_classes, dtype=dtype, rngs=rngs)
    self.head_dist = (layers.linear(embed_dim, num_classes, dtype=dtype, rngs=rngs)
                      if distilled else None)

  def forward_features(self, x):
    x = self.patch_embed(x)
    b = x.shape[0]
    tokens = [t[...] for t in (self.cls_token, self.dist_token) if t is not None]
    tokens = [jnp.broadcast_to(t, (b, 1, t.shape[-1])).astype(x.dtype) for t in tokens]
    pos_embed = self.pos_embed[...]
    if x.shape[1] + len(tokens) != pos_embed.shape[1]:
      raise ValueError(f'Input gives {x.shape[1]} patches but pos_embed was built for '
                       f'{pos_embed.shape[1] - len(tokens)} (img_size={self.img_size}); '
                       'create the model with the img_size you feed it (a checkpoint of '
                       'another size is resampled when it is loaded).')
    x = jnp.concatenate(tokens + [x], axis=1) + pos_embed.astype(x.dtype)
    if self.norm_pre is not None:
      x = self.norm_pre(x)
    for block in self.blocks:
      x = block(x)
    return x if self.norm is None else self.norm(x)

  def __call__(self, x):
    x = self.forward_features(x)
    if self.distilled:
      logits, logits_dist = self.head(x[:, 0]), self.head_dist(x[:, 1])
      if self.deterministic:
        return (logits + logits_dist) / 2
      return logits, logits_dist
    x = x[:, 0] if self.global_pool == 'token' else x[:, self.num_prefix_tokens:].mean(axis=1)
    if self.fc_norm is not None:
      x = self.fc_norm(x)
    if self.proj is not None:
      x = self.proj(x)
    return self.head(x)


def resample_abs_pos_embed(pos_embed: np.ndarray, grid_size: int,
                           num_prefix_tokens: int) -> np.ndarray:
  """A (1, prefix + g*g, D) position embedding resampled to ``grid_size``² patches, as
  timm's ``resample_abs_pos_embed`` does when it loads weights of another size: the
  prefix tokens' rows kept, the square grid resized bicubic with antialiasing (torch's
  ``F.interpolate(mode='bicubic', antialias=True)``, which jax's resize equals)."""
  prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[0, num_prefix_tokens:]
  old = int(round(grid.shape[0]**0.5))
  if old * old != grid.shape[0]:
    raise ValueError(f'pos_embed holds {grid.shape[0]} patch positions after '
                     f'{num_prefix_tokens} prefix tokens: not a square grid.')
  grid = jax.image.resize(
      jnp.asarray(grid, jnp.float32).reshape(old, old, -1), (grid_size, grid_size, grid.shape[-1]),
      'bicubic', antialias=True)
  grid = np.asarray(grid).reshape(1, grid_size * grid_size, -1).astype(pos_embed.dtype)
  return np.concatenate([prefix, grid], axis=1)


# Input normalisation of each name's weights, as timm's default pretrained_cfg. timm's
# default tags of the L/14 CLIP models (laion2b) use 0.5/0.5; the OpenAI tags, the
# paper's teacher and the other CLIP tags use CLIP's mean/std, taken here.
_INCEPTION = dict(mean=normalisation.INCEPTION_MEAN, std=normalisation.INCEPTION_STD)
_CLIP = dict(mean=normalisation.OPENAI_CLIP_MEAN, std=normalisation.OPENAI_CLIP_STD)
_CLIP_ARGS = dict(pre_norm=True, norm_eps=1e-5)


@register_model(input_size=224, crop_pct=0.9, **_INCEPTION)
def vit_base_patch16_224(**kwargs):
  model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, img_size=224)
  return VisionTransformer(**dict(model_args, **kwargs))


@register_model(input_size=224, crop_pct=0.9, **_INCEPTION)
def vit_base_patch32_224(**kwargs):
  model_args = dict(patch_size=32, embed_dim=768, depth=12, num_heads=12, img_size=224)
  return VisionTransformer(**dict(model_args, **kwargs))


@register_model(input_size=224, crop_pct=0.9, **_INCEPTION)
def vit_large_patch16_224(**kwargs):
  model_args = dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16, img_size=224)
  return VisionTransformer(**dict(model_args, **kwargs))


@register_model(input_size=224, crop_pct=0.9, **_CLIP)
def vit_base_patch32_clip_224(**kwargs):
  model_args = dict(patch_size=32, embed_dim=768, depth=12, num_heads=12, img_size=224,
                    **_CLIP_ARGS)
  return VisionTransformer(**dict(model_args, **kwargs))


@register_model(input_size=224, crop_pct=0.95, **_CLIP)
def vit_base_patch16_clip_224(**kwargs):
  model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, img_size=224,
                    **_CLIP_ARGS)
  return VisionTransformer(**dict(model_args, **kwargs))


@register_model(input_size=224, crop_pct=1.0, **_CLIP)
def vit_large_patch14_clip_224(**kwargs):
  model_args = dict(patch_size=14, embed_dim=1024, depth=24, num_heads=16, img_size=224,
                    **_CLIP_ARGS)
  return VisionTransformer(**dict(model_args, **kwargs))


@register_model(input_size=336, crop_pct=1.0, **_CLIP)
def vit_large_patch14_clip_336(**kwargs):
  model_args = dict(patch_size=14, embed_dim=1024, depth=24, num_heads=16, img_size=336,
                    **_CLIP_ARGS)
  return VisionTransformer(**dict(model_args, **kwargs))


@register_model(input_size=224, crop_pct=1.0, **_CLIP)
def vit_huge_patch14_clip_224(**kwargs):
  model_args = dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16, img_size=224,
                    **_CLIP_ARGS)
  return VisionTransformer(**dict(model_args, **kwargs))


# OpenAI's CLIP and its reproductions use QuickGELU.
@register_model(input_size=224, crop_pct=1.0, **_CLIP)
def vit_base_patch16_clip_quickgelu_224(**kwargs):
  model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, img_size=224,
                    act='quick_gelu', **_CLIP_ARGS)
  return VisionTransformer(**dict(model_args, **kwargs))


@register_model(input_size=224, crop_pct=1.0, **_CLIP)
def vit_large_patch14_clip_quickgelu_224(**kwargs):
  model_args = dict(patch_size=14, embed_dim=1024, depth=24, num_heads=16, img_size=224,
                    act='quick_gelu', **_CLIP_ARGS)
  return VisionTransformer(**dict(model_args, **kwargs))


@register_model(input_size=336, crop_pct=1.0, **_CLIP)
def vit_large_patch14_clip_quickgelu_336(**kwargs):
  model_args = dict(patch_size=14, embed_dim=1024, depth=24, num_heads=16, img_size=336,
                    act='quick_gelu', **_CLIP_ARGS)
  return VisionTransformer(**dict(model_args, **kwargs))


@register_model(input_size=224, crop_pct=1.0, **_CLIP)
def vit_huge_patch14_clip_quickgelu_224(**kwargs):
  model_args = dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16, img_size=224,
                    act='quick_gelu', **_CLIP_ARGS)
  return VisionTransformer(**dict(model_args, **kwargs))


# The TinyViT paper's teacher as Cream builds it (model type clip_vit_large14_224, its
# teacher config's MEAN_AND_STD_TYPE: clip, Cream's test crop 224/256): OpenAI's L/14
# with its bias-free projection to 768 before the head.
@register_model(input_size=224, crop_pct=0.875, **_CLIP)
def clip_vit_large14_224(**kwargs):
  model_args = dict(patch_size=14, embed_dim=1024, depth=24, num_heads=16, img_size=224,
                    act='quick_gelu', proj_dim=768, **_CLIP_ARGS)
  return VisionTransformer(**dict(model_args, **kwargs))
