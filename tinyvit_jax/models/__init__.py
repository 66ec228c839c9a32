"""Models by timm's names: ``create_model(name, num_classes=..., rngs=..., **overrides)``,
and with ``pretrained=True`` timm's weights from the Hugging Face Hub (``models.hub``)."""
from flax import nnx

from tinyvit_jax.models import (  # noqa: F401  (registers the models)
    deit, regnet, resnet, tiny_vit, vision_transformer)
from tinyvit_jax.models import hub, registry
from tinyvit_jax.models.layers import WEIGHTS
from tinyvit_jax.models.registry import list_models, model_info

__all__ = ['WEIGHTS', 'create_model', 'list_models', 'model_info']


def create_model(name: str, *, pretrained: bool = False, rngs: nnx.Rngs | None = None,
                 **kwargs) -> nnx.Module:
  """``registry.create_model``'s model; with ``pretrained``, the Hub model ``name``
  (``ARCH[.TAG]`` or ``hf-hub:ORG/NAME[@REV]``) with timm's weights, its class count and
  preprocessing the repo's (``hub.model_json``); ``allow_pickle=True`` reads a repo that
  has only a pickled ``pytorch_model.bin``. As in timm, an ``hf-hub:`` name without
  ``pretrained`` is the repo's architecture and arguments, randomly initialised."""
  if pretrained:
    return hub.load_model(name, rngs=rngs, **kwargs)
  if hub.is_hub_name(name):
    meta = hub.model_json(name)
    return registry.create_model(meta['model'], rngs=rngs, **{**meta['kwargs'], **kwargs})
  return registry.create_model(name, rngs=rngs, **kwargs)
