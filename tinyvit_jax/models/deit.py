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
_SIZES = {'tiny': (192, 3), 'small': (384, 6), 'base': (768, 12)}


def _register(size: str, distilled: bool, img_size: int):
  name = f'deit_{size}_{"distilled_" if distilled else ""}patch16_{img_size}'
  dim, heads = _SIZES[size]

  def constructor(**kwargs):
    return VisionTransformer(
        **{
            'embed_dim': dim,
            'depth': 12,
            'num_heads': heads,
            'distilled': distilled,
            'img_size': img_size,
            **kwargs
        })

  constructor.__name__ = name
  crop_pct = 0.875 if img_size == 224 else 1.0
  return register_model(input_size=img_size, crop_pct=crop_pct, **_CFG)(constructor)


for _size in _SIZES:
  for _distilled in (False, True):
    for _img_size in (224, 384):
      _register(_size, _distilled, _img_size)
