"""Models by timm's names: ``create_model(name, num_classes=..., rngs=..., **overrides)``."""
from tinyvit_jax.models import (  # noqa: F401  (registers the models)
    deit, regnet, resnet, tiny_vit, vision_transformer)
from tinyvit_jax.models.layers import WEIGHTS
from tinyvit_jax.models.registry import create_model, list_models, model_info

__all__ = ['WEIGHTS', 'create_model', 'list_models', 'model_info']
