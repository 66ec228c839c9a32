"""ViT parity with timm, one option per test, at small widths (a few tokens, 2 blocks):
random timm weights, perturbed -> our converter -> our model, eval mode, float32."""
import numpy as np
import pytest

from timm_reference import assert_logits_close, create_timm_model, jit_forward, timm_logits
from tinyvit_jax.models import timm_weights
from tinyvit_jax.models import create_model

_SMALL = dict(embed_dim=32, depth=2, num_heads=2, num_classes=10)


def _images(size, batch=2, seed=1):
  return np.random.RandomState(seed).randn(batch, size, size, 3).astype(np.float32)


def _ours(name, sd, **kwargs):
  model = create_model(name, **_SMALL, **kwargs)
  timm_weights.load_timm_state_dict(model, sd)
  model.eval()
  return model


@pytest.mark.parametrize('name,img_size,options', [
    ('vit_base_patch16_224', 48, {}),                       # patch 16, class token, GELU
    ('vit_base_patch32_224', 64, {}),                       # patch 32
    ('vit_base_patch16_clip_224', 48, {}),                  # norm_pre, bias-free patch conv
    ('vit_large_patch14_clip_quickgelu_224', 42, {}),       # patch 14, QuickGELU
    ('vit_base_patch16_224', 48, dict(global_pool='avg')),  # avg of patches, fc_norm
    ('vit_base_patch16_224', 48, dict(class_token=False, global_pool='avg')),
    ('vit_base_patch16_224', 48, dict(fc_norm=True)),       # class token, then fc_norm
    ('vit_base_patch16_clip_224', 48, dict(init_values=0.1)),  # LayerScale ls1/ls2
])
def test_parity_with_timm(name, img_size, options):
  timm_model = create_timm_model(name, img_size=img_size, **_SMALL, **options).eval()
  ours = _ours(name, timm_model.state_dict(), img_size=img_size, **options)
  images = _images(img_size)
  assert_logits_close(jit_forward(ours, images), timm_logits(timm_model, images))


@pytest.mark.parametrize('trained,used,options', [
    (48, 64, {}),                                           # 3x3 -> 4x4 grid, cls kept
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
  ours = _ours(name, create_timm_model(name, seed=3, **_SMALL, **options).state_dict(),
               **options)
  path = str(tmp_path / 'vit.safetensors')
  timm_weights.write_timm_safetensors(ours, path)
  fresh = create_timm_model(name, seed=99, **_SMALL, **options)
  fresh.load_state_dict(load_file(path), strict=True)
  images = _images(28)
  assert_logits_close(jit_forward(ours, images), timm_logits(fresh.eval(), images))
