"""Models by timm's names: ``create_model(name, num_classes=..., rngs=..., **overrides)``."""
from tinyvit_jax.models import deit, regnet, resnet, tiny_vit  # noqa: F401  (registers the models)
from tinyvit_jax.models.layers import WEIGHTS
from tinyvit_jax.models.registry import create_model, list_models, model_info

__all__ = ['WEIGHTS', 'create_model', 'list_models', 'model_info']
