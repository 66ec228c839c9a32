"""DeiT (Touvron et al., 2021, arXiv:2012.12877): ViT-Ti/S/B with patch 16, plus, for the
``_distilled_`` variants, a distillation token read by its own head
(``vision_transformer.VisionTransformer(distilled=True)``). Token order is [cls, dist,
patches]. In training mode a distilled model returns both heads' logits; in eval mode
their mean. Names and state_dict keys are timm's ``deit.py``.
"""
from tinyvit_jax import normalisation
from tinyvit_jax.models.registry import register_model
from tinyvit_jax.models.vision_transformer import VisionTransformer

_CFG = dict(mean=normalisation.IMAGENET_MEAN, std=normalisation.IMAGENET_STD)


@register_model(input_size=224, crop_pct=0.875, **_CFG)
def deit_tiny_patch16_224(**kwargs):
  model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, img_size=224)
  return VisionTransformer(**dict(model_args, **kwargs))


@register_model(input_size=384, crop_pct=1.0, **_CFG)
def deit_tiny_patch16_384(**kwargs):
  model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, img_size=384)
  return VisionTransformer(**dict(model_args, **kwargs))


@register_model(input_size=224, crop_pct=0.875, **_CFG)
def deit_tiny_distilled_patch16_224(**kwargs):
  model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, img_size=224,
                    distilled=True)
  return VisionTransformer(**dict(model_args, **kwargs))


@register_model(input_size=384, crop_pct=1.0, **_CFG)
def deit_tiny_distilled_patch16_384(**kwargs):
  model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, img_size=384,
                    distilled=True)
  return VisionTransformer(**dict(model_args, **kwargs))


@register_model(input_size=224, crop_pct=0.875, **_CFG)
def deit_small_patch16_224(**kwargs):
  model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, img_size=224)
  return VisionTransformer(**dict(model_args, **kwargs))


@register_model(input_size=384, crop_pct=1.0, **_CFG)
def deit_small_patch16_384(**kwargs):
  model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, img_size=384)
  return VisionTransformer(**dict(model_args, **kwargs))


@register_model(input_size=224, crop_pct=0.875, **_CFG)
def deit_small_distilled_patch16_224(**kwargs):
  model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, img_size=224,
                    distilled=True)
  return VisionTransformer(**dict(model_args, **kwargs))


@register_model(input_size=384, crop_pct=1.0, **_CFG)
def deit_small_distilled_patch16_384(**kwargs):
  model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, img_size=384,
                    distilled=True)
  return VisionTransformer(**dict(model_args, **kwargs))


@register_model(input_size=224, crop_pct=0.875, **_CFG)
def deit_base_patch16_224(**kwargs):
  model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, img_size=224)
  return VisionTransformer(**dict(model_args, **kwargs))


@register_model(input_size=384, crop_pct=1.0, **_CFG)
def deit_base_patch16_384(**kwargs):
  model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, img_size=384)
  return VisionTransformer(**dict(model_args, **kwargs))


@register_model(input_size=224, crop_pct=0.875, **_CFG)
def deit_base_distilled_patch16_224(**kwargs):
  model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, img_size=224,
                    distilled=True)
  return VisionTransformer(**dict(model_args, **kwargs))


@register_model(input_size=384, crop_pct=1.0, **_CFG)
def deit_base_distilled_patch16_384(**kwargs):
  model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, img_size=384,
                    distilled=True)
  return VisionTransformer(**dict(model_args, **kwargs))
