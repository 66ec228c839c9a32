"""ViT parity with timm, one option per test, at small widths (a few tokens, 2 blocks):
random timm weights, perturbed -> our converter -> our model, eval mode, float32; and
every registered ViT's real architecture and preprocessing against timm's."""
from unittest import mock

import numpy as np
import pytest
import torch
from flax import nnx

from timm_reference import assert_logits_close, create_timm_model, jit_forward, timm_logits
from tinyvit_jax.models import create_model, deit, list_models, model_info, timm_weights
from tinyvit_jax.models import vision_transformer

_SMALL = dict(embed_dim=32, depth=2, num_heads=2, num_classes=10)


def _images(size, batch=2, seed=1):
  return np.random.RandomState(seed).randn(batch, size, size, 3).astype(np.float32)


def _ours(name, sd, **kwargs):
  model = create_model(name, **_SMALL, **kwargs)
  timm_weights.load_timm_state_dict(model, sd)
  model.eval()
  return model


@pytest.mark.parametrize(
    'name,img_size,options',
    [
        ('vit_base_patch16_224', 48, {}),  # patch 16, class token, GELU
        ('vit_base_patch32_224', 64, {}),  # patch 32
        ('vit_base_patch16_clip_224', 48, {}),  # norm_pre, bias-free patch conv
        ('vit_large_patch14_clip_quickgelu_224', 42, {}),  # patch 14, QuickGELU
        ('vit_base_patch16_224', 48, dict(global_pool='avg')),  # avg of patches, fc_norm
        ('vit_base_patch16_224', 48, dict(class_token=False, global_pool='avg')),
        ('vit_base_patch16_224', 48, dict(fc_norm=True)),  # class token, then fc_norm
        ('vit_base_patch16_clip_224', 48, dict(init_values=0.1)),  # LayerScale ls1/ls2
    ])
def test_parity_with_timm(name, img_size, options):
  timm_model = create_timm_model(name, img_size=img_size, **_SMALL, **options).eval()
  ours = _ours(name, timm_model.state_dict(), img_size=img_size, **options)
  images = _images(img_size)
  assert_logits_close(jit_forward(ours, images), timm_logits(timm_model, images))


@pytest.mark.parametrize(
    'trained,used,options',
    [
        (48, 64, {}),  # 3x3 -> 4x4 grid, cls kept
        (64, 48, dict(class_token=False, global_pool='avg')),  # 4x4 -> 3x3, no prefix
    ])
def test_weights_of_another_size_load_as_timm_loads_them(trained, used, options):
  """The pos_embed resampled as timm's checkpoint_filter_fn does (bicubic, antialiased,
  prefix tokens kept), then the same logits as timm's model at the new size."""
  from timm.models.vision_transformer import checkpoint_filter_fn
  name = 'vit_base_patch16_clip_224'
  sd = create_timm_model(name, img_size=trained, **_SMALL, **options).state_dict()
  timm_model = create_timm_model(name, img_size=used, **_SMALL, **options)
  timm_model.load_state_dict(checkpoint_filter_fn(sd, timm_model), strict=True)
  timm_model.eval()
  ours = _ours(name, sd, img_size=used, **options)
  images = _images(used)
  assert_logits_close(jit_forward(ours, images), timm_logits(timm_model, images))


def test_round_trip_through_timm_safetensors(tmp_path):
  """ours -> timm-named safetensors -> timm (strict load): the same logits."""
  from safetensors.torch import load_file
  name, options = 'vit_large_patch14_clip_quickgelu_224', dict(init_values=0.1, img_size=28)
  ours = _ours(name, create_timm_model(name, seed=3, **_SMALL, **options).state_dict(), **options)
  path = str(tmp_path / 'vit.safetensors')
  timm_weights.write_timm_safetensors(ours, path)
  fresh = create_timm_model(name, seed=99, **_SMALL, **options)
  fresh.load_state_dict(load_file(path), strict=True)
  images = _images(28)
  assert_logits_close(jit_forward(ours, images), timm_logits(fresh.eval(), images))


# Our names that timm lacks: timm's 224 model built at 384 (pretrained config: its mean
# and std only). The L/14 CLIP names take the OpenAI tag's normalisation, as the registry
# says (timm's default tag, laion2b, uses 0.5/0.5). Cream's clip_vit_large14_224 is not
# timm's (test_convert holds it against Cream's own checkpoint).
_TIMM_384 = {
    f'deit_{size}{kind}_patch16_384': f'deit_{size}{kind}_patch16_224' for size in ('tiny', 'small')
    for kind in ('', '_distilled')
}
_TAGS = {'vit_large_patch14_clip_224': 'openai', 'vit_large_patch14_clip_336': 'openai'}
_ACTS = {'gelu': 'GELU', 'quick_gelu': 'QuickGELU'}
# DeiT at 224 is evaluated as the official code does (resize 256, crop 224:
# --eval-crop-ratio 0.875); timm's config says 0.9.
_OFFICIAL_CROP = {
    f'deit_{size}{kind}_patch16_224': 0.875 for size in ('tiny', 'small', 'base')
    for kind in ('', '_distilled')
}


def _architecture(model, depth: int | None = None) -> dict:
  """What a ViT is built from, read off ours (``depth`` given: built with one block) or
  timm's (a torch module), in one vocabulary."""
  first = model.blocks[0]
  if isinstance(first, nnx.Module):
    act, eps, heads = _ACTS[first.mlp.act], first.norm1.epsilon, first.attn.num_heads
    hidden, width = first.mlp.fc1.kernel.shape[1], model.pos_embed.shape[-1]
    patch, img_size = model.patch_embed.proj.patch, model.img_size
    patch_bias, qkv_bias = model.patch_embed.proj.bias, first.attn.qkv.bias
    reg_tokens = 0  # ours has no register tokens
  else:
    act, eps = type(first.mlp.act).__name__, first.norm1.eps
    (heads,) = {block.attn.num_heads for block in model.blocks}
    hidden, width = first.mlp.fc1.out_features, model.embed_dim
    patch, img_size = model.patch_embed.patch_size[0], model.patch_embed.img_size[0]
    patch_bias, qkv_bias = model.patch_embed.proj.bias, first.attn.qkv.bias
    reg_tokens, depth = model.num_reg_tokens, len(model.blocks)
  present = lambda module: module is not None and type(module).__name__ != 'Identity'
  return dict(width=width, depth=depth, heads=heads, mlp_ratio=hidden / width, eps=eps, act=act,
              patch=patch, img_size=img_size, patch_bias=patch_bias is not None, qkv_bias=qkv_bias
              is not None, norm_pre=present(model.norm_pre), norm=present(model.norm),
              fc_norm=present(model.fc_norm), layer_scale=present(first.ls1),
              class_token=model.cls_token is not None, reg_tokens=reg_tokens,
              global_pool=model.global_pool, distilled=getattr(model, 'head_dist',
                                                               None) is not None)


def _registry_depth(name: str) -> int:
  """The depth the registry passes to VisionTransformer for ``name``."""

  class Called(Exception):
    pass

  def record(**kwargs):
    raise Called(kwargs['depth'])

  with mock.patch.object(vision_transformer, 'VisionTransformer', record), \
       mock.patch.object(deit, 'VisionTransformer', record), pytest.raises(Called) as called:
    create_model(name)
  return called.value.args[0]


@pytest.mark.parametrize('name', [n for n in list_models() if n.startswith(('vit_', 'deit_'))])
def test_registry_is_timms_model_and_pretrained_config(name):
  """Every registered ViT and DeiT at its real size against timm's, built on torch's meta
  device (no weights allocated) and ours as shapes only (nnx.eval_shape): widths, depth,
  head count (timm's the same in every block), MLP ratio, norm eps, activation, norms,
  biases, LayerScale, tokens, pooling, patch and image size; then input size, crop and
  normalisation against its pretrained config."""
  import timm
  timm_name = _TIMM_384.get(name, name)
  tag = _TAGS.get(name)
  with torch.device('meta'):
    theirs = timm.create_model(f'{timm_name}.{tag}' if tag else timm_name, pretrained=False,
                               **(dict(img_size=384) if timm_name != name else {}))
  # Ours as shapes (nnx.eval_shape) with one block: tracing the initialisers of 32 costs
  # seconds; the blocks are built alike, so the depth is read from the registry's call.
  ours = nnx.eval_shape(lambda: create_model(name, depth=1))
  assert _architecture(ours, _registry_depth(name)) == _architecture(theirs)
  info, cfg = model_info(name), theirs.pretrained_cfg
  assert (info.mean, info.std) == (tuple(cfg['mean']), tuple(cfg['std']))
  if timm_name == name:
    assert (info.input_size, info.crop_pct) == (cfg['input_size'][-1],
                                                _OFFICIAL_CROP.get(name, cfg['crop_pct']))
    assert cfg['input_size'][-1] == ours.img_size
