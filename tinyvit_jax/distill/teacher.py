"""The teacher of a save pass: a name, a checkpoint hash, a class count and probabilities.

A save pass needs nothing else from a teacher, so any model can be one: ``Teacher`` is a
plain record, and each kind of checkpoint gets a small adapter that builds it.
``from_checkpoint`` reads our own checkpoints (``model_checkpoint``); adapters for other
frameworks live beside it and return the same record.

``probabilities(images) -> (B, C) float32``: the softmax of the teacher's logits on
augmented, normalised float32 NHWC images, as the device augmentation gives them (a jax
array, possibly sharded over several devices). ``checkpoint_hash`` names the weights in
the store's manifest, so a resumed save pass refuses to mix two teachers' rows.
"""
import functools
import hashlib
import os
from typing import Callable, NamedTuple

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tinyvit_jax import model_checkpoint
from tinyvit_jax.data import pipeline
from tinyvit_jax.models import WEIGHTS


class Teacher(NamedTuple):
  name: str
  checkpoint_hash: str
  num_classes: int
  probabilities: Callable


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


def from_checkpoint(directory: str, **overrides) -> Teacher:
  """The teacher held in one of our model checkpoints, in eval mode, jitted.

  ``overrides`` go to ``model_checkpoint.restore_model`` (e.g. ``dtype=jnp.bfloat16`` to
  compute in bfloat16; the softmax is taken in float32 either way). A distilled DeiT
  gives the mean of its two heads, as at inference.
  """
  if not os.path.exists(directory):
    raise model_checkpoint.CheckpointError(
        f'Teacher checkpoint {os.path.abspath(directory)!r} does not exist. Create one '
        'from timm or official weights with `python -m tinyvit_jax.convert --model NAME '
        '--from WEIGHTS --out DIR`, or from a model of ours with '
        '`tinyvit_jax.model_checkpoint.save_model(DIR, model, NAME, **kwargs)`.')
  name = model_checkpoint.read_model_json(directory)['model']
  model = model_checkpoint.restore_model(directory, **overrides)
  model.eval()
  graphdef, state = nnx.split(model)
  # Restored weights sit on one device; the save pass spreads images over all local ones.
  state = jax.device_put(state, NamedSharding(pipeline.data_mesh(jax.local_devices()), P()))

  @jax.jit
  def forward(state, images):  # weights as an argument: as constants they would be compiled in
    logits = nnx.merge(graphdef, state)(images)
    return jax.nn.softmax(logits.astype(np.float32), axis=-1)

  return Teacher(name, weights_hash(nnx.to_pure_dict(nnx.state(model, WEIGHTS))),
                 model.num_classes, functools.partial(forward, state))
