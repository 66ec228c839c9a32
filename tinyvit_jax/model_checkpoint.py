"""An inference checkpoint: a model's name, constructor arguments and weights.

Layout of a checkpoint directory::

  DIR/model.json   {"format": 1, "model": name, "kwargs": {...}, "metadata": {...},
                    "weights_hash": weights_hash of the state}
  DIR/state/       orbax PyTree checkpoint of the Params and BatchStats

``weights_hash`` names the weights without restoring them: what was computed from a
teacher (its eval rows) is recognised by it. Checkpoints saved before it was recorded
lack it, and their readers restore the weights to hash them.

The directory is assembled under a temporary name and renamed into place, so a save
killed half-way never leaves a ``DIR`` that looks complete. Where a directory is read, an
``hf-hub:ORG/NAME[@REV]`` name may stand instead: timm's weights from the Hugging Face
Hub, with what ``model.json`` would record of them (``models.hub``).
"""
import hashlib
import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from tinyvit_jax import errors
from tinyvit_jax import writes
from tinyvit_jax.models import WEIGHTS, hub, model_info, registry

FORMAT_VERSION = 1
_JSON_TYPES = (int, float, str, bool, list, tuple, type(None))
_HOW_TO_MAKE = ('expected a directory written by `python -m tinyvit_jax.convert --model NAME '
                "--from FILE --out DIR` or by a run's export stage")


class CheckpointError(errors.UserError, ValueError):
  """A path that is not the checkpoint or weights file its reader expects; the CLIs and
  ``main`` print it as one line."""


class CheckpointExists(errors.UserError, FileExistsError):
  """The directory a checkpoint is to be written to exists already."""


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
    raise CheckpointExists(f'{directory} exists; choose another --out or remove it.')
  os.makedirs(os.path.dirname(directory), exist_ok=True)
  with writes.replacing(directory) as tmp:
    os.mkdir(tmp)
    state = nnx.to_pure_dict(nnx.state(model, WEIGHTS))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(tmp, 'state'), state)
    checkpointer.wait_until_finished()
    with open(os.path.join(tmp, 'model.json'), 'w') as f:
      json.dump(
          {
              'format': FORMAT_VERSION,
              'model': name,
              'kwargs': kwargs,
              'metadata': metadata or {},
              'weights_hash': weights_hash(state)
          }, f, indent=1)
    if os.path.exists(directory):
      shutil.rmtree(directory)


def weights_hash(state) -> str:
  """sha256 over every weight, by name, dtype, shape and bytes, in name order.

  A hash of the values rather than of the checkpoint's files, whose bytes depend on the
  writer (orbax's layout and metadata), so the same weights hash the same however saved.
  """
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  for path, leaf in sorted((jax.tree_util.keystr(path), leaf) for path, leaf in leaves):
    array = np.ascontiguousarray(jax.device_get(leaf))
    digest.update(f'{path}:{array.dtype.str}:{array.shape};'.encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def read_model_json(directory: str) -> dict:
  if hub.is_hub_name(directory):
    return hub.model_json(directory)
  path = os.path.join(os.path.abspath(directory), 'model.json')
  if not os.path.isfile(path):
    state = ('does not exist' if not os.path.exists(directory) else
             'is a file' if not os.path.isdir(directory) else 'has no model.json')
    raise CheckpointError(f'{directory}: {state}, so it is not a model checkpoint; '
                          f'{_HOW_TO_MAKE}.')
  try:
    with open(path) as f:
      meta = json.load(f)
  except ValueError as error:  # not UTF-8, not JSON
    raise CheckpointError(f'{path}: not JSON ({error}); {_HOW_TO_MAKE}.') from None
  if not isinstance(meta, dict) or not {'model', 'kwargs'} <= set(meta):
    raise CheckpointError(f'{path}: lacks "model" and "kwargs"; {_HOW_TO_MAKE}.')
  if meta.get('format') != FORMAT_VERSION:
    raise CheckpointError(f'{path}: format {meta.get("format")!r}, this version reads '
                          f'{FORMAT_VERSION}.')
  return meta


def preprocess(meta: dict) -> dict:
  """The eval preprocessing a checkpoint's model expects (image size, crop, mean, std):
  the one its ``model.json`` records (an export's, a conversion's), else its registered
  model's. A teacher re-normalises the student's views with its mean and std."""
  return (meta.get('metadata', {}).get('preprocess')
          or registered_preprocess(meta['model'], meta['kwargs']))


def registered_preprocess(name: str, kwargs: dict) -> dict:
  """The registry's eval preprocessing of model ``name`` built with ``kwargs``."""
  info = model_info(name)
  return dict(image_size=kwargs.get('img_size', info.input_size), crop_pct=info.crop_pct,
              mean=list(info.mean), std=list(info.std))


def restore_model(directory: str, *, rngs: nnx.Rngs | None = None, **overrides) -> nnx.Module:
  """Creates the saved model and loads its weights. ``overrides`` (e.g. ``dtype``,
  ``drop_path_rate``) change how it runs, not what it holds."""
  if hub.is_hub_name(directory):
    return hub.load_model(directory, rngs=rngs, **overrides)
  directory = os.path.abspath(directory)
  meta = read_model_json(directory)
  try:
    model = registry.create_unfilled(meta['model'], rngs=rngs, **{**meta['kwargs'], **overrides})
  except (TypeError, ValueError) as error:  # an unknown model name or argument
    raise CheckpointError(f'{directory}/model.json: {error}; expected a registered model '
                          'and its arguments.') from None
  state = nnx.state(model, WEIGHTS)
  # The device is named: orbax would otherwise place each weight as it was saved, which a
  # run with another process count cannot ("Topology mismatch").
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=local),
                        nnx.to_pure_dict(state))
  try:
    restored = ocp.StandardCheckpointer().restore(os.path.join(directory, 'state'), target)
  except (OSError, ValueError, KeyError, TypeError) as error:  # orbax's, for a damaged state/
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    raise CheckpointError(f'{directory}/state: not the weights of {meta["model"]} as '
                          f'model.json describes them ({reason}); {_HOW_TO_MAKE}.') from None
  nnx.replace_by_pure_dict(state, restored)
  nnx.update(model, state)
  return model
