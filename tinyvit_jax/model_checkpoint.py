"""An inference checkpoint: a model's name, constructor arguments and weights.

Layout of a checkpoint directory::

  DIR/model.json   {"format": 1, "model": name, "kwargs": {...}, "metadata": {...}}
  DIR/state/       orbax PyTree checkpoint of the Params and BatchStats

The directory is assembled under a temporary name and renamed into place, so a save
killed half-way never leaves a ``DIR`` that looks complete.
"""
import json
import os
import shutil
import tempfile

import jax
import orbax.checkpoint as ocp
from flax import nnx

from tinyvit_jax.models import WEIGHTS, create_model

FORMAT_VERSION = 1
_JSON_TYPES = (int, float, str, bool, list, tuple, type(None))


def save_model(directory: str, model: nnx.Module, name: str, *, overwrite: bool = False,
               metadata: dict | None = None, **kwargs) -> None:
  """Saves ``model`` (created as ``create_model(name, **kwargs)``) to ``directory``.

  ``metadata`` (JSON): what a user of the weights needs besides them, e.g. the class
  names and the eval preprocessing a training run exports.
  """
  directory = os.path.abspath(directory)
  bad = {k: v for k, v in kwargs.items() if not isinstance(v, _JSON_TYPES)}
  if bad:
    raise ValueError(f'Constructor arguments {sorted(bad)} cannot be stored in model.json; '
                     'pass plain numbers, strings or lists.')
  if os.path.exists(directory) and not overwrite:
    raise FileExistsError(f'{directory} exists; choose another --out or remove it.')
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(directory)}.tmp-', dir=parent)
  try:
    state = nnx.state(model, WEIGHTS)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(tmp, 'state'), nnx.to_pure_dict(state))
    checkpointer.wait_until_finished()
    with open(os.path.join(tmp, 'model.json'), 'w') as f:
      json.dump({'format': FORMAT_VERSION, 'model': name, 'kwargs': kwargs,
                 'metadata': metadata or {}}, f, indent=1)
    if os.path.exists(directory):
      shutil.rmtree(directory)
    os.replace(tmp, directory)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def read_model_json(directory: str) -> dict:
  path = os.path.join(os.path.abspath(directory), 'model.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'{path} not found: {directory!r} is not a model checkpoint. Create one with '
        '`python -m tinyvit_jax.convert --model NAME --from FILE --out DIR`.')
  with open(path) as f:
    meta = json.load(f)
  if meta.get('format') != FORMAT_VERSION:
    raise ValueError(f'{path}: format {meta.get("format")!r}, this version reads '
                     f'{FORMAT_VERSION}.')
  return meta


def restore_model(directory: str, *, rngs: nnx.Rngs | None = None, **overrides) -> nnx.Module:
  """Creates the saved model and loads its weights. ``overrides`` (e.g. ``dtype``,
  ``drop_path_rate``) change how it runs, not what it holds."""
  directory = os.path.abspath(directory)
  meta = read_model_json(directory)
  model = create_model(meta['model'], rngs=rngs, **{**meta['kwargs'], **overrides})
  state = nnx.state(model, WEIGHTS)
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.to_pure_dict(state))
  restored = ocp.StandardCheckpointer().restore(os.path.join(directory, 'state'), target)
  nnx.replace_by_pure_dict(state, restored)
  nnx.update(model, state)
  return model
