"""One registry: models are created by timm's names, with their preprocessing config."""
import dataclasses
import difflib
from typing import Callable

import jax
from flax import nnx

from tinyvit_jax.models.layers import WEIGHTS


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """What a caller needs besides the weights: input size and normalisation."""
  name: str
  constructor: Callable[..., nnx.Module]
  input_size: int
  crop_pct: float
  mean: tuple[float, float, float]
  std: tuple[float, float, float]


_MODELS: dict[str, ModelInfo] = {}


def register_model(*, input_size: int, crop_pct: float, mean, std):

  def wrap(constructor):
    name = constructor.__name__
    _MODELS[name] = ModelInfo(name, constructor, input_size, crop_pct, tuple(mean), tuple(std))
    return constructor

  return wrap


def list_models() -> list[str]:
  return sorted(_MODELS)


def model_info(name: str) -> ModelInfo:
  if name not in _MODELS:
    close = difflib.get_close_matches(name, _MODELS, n=3)
    hint = f' Did you mean {", ".join(close)}?' if close else ''
    raise ValueError(f'Unknown model {name!r}.{hint} Known: {", ".join(list_models())}.')
  return _MODELS[name]


def create_model(name: str, *, num_classes: int = 1000, rngs: nnx.Rngs | None = None,
                 **overrides) -> nnx.Module:
  """Creates a registered model in float32 params; ``dtype=jnp.bfloat16`` sets compute.

  ``overrides`` go to the constructor: e.g. ``img_size``, ``window_sizes``,
  ``drop_path_rate``, ``dtype``.
  """
  if num_classes < 1:
    raise ValueError(f'num_classes={num_classes}; it must be at least 1.')
  rngs = rngs if rngs is not None else nnx.Rngs(0)
  return model_info(name).constructor(num_classes=num_classes, rngs=rngs, **overrides)


def create_unfilled(name: str, *, rngs: nnx.Rngs | None = None, **kwargs) -> nnx.Module:
  """``create_model(name, **kwargs)`` for a checkpoint to fill: its weights abstract (shapes
  only), its other state (drop path's RNG streams) as ``create_model`` makes it. One trace
  and one small compile, where an eager random init of weights about to be replaced
  compiles a program per weight shape."""
  rngs = rngs if rngs is not None else nnx.Rngs(0)
  build = lambda: create_model(name, rngs=nnx.clone(rngs), **kwargs)  # noqa: E731
  model = nnx.eval_shape(build)
  nnx.update(model, jax.jit(lambda: nnx.state(build(), nnx.Not(WEIGHTS)))())
  return model
