"""Starting a run from another run's weights: fine-tuning, including 21k -> 1k heads.

The checkpoint is one of ours (``model.json`` + ``state/``; convert timm or official
weights with ``python -m tinyvit_jax.convert``) or a Hub name (``hf-hub:ORG/NAME``, e.g.
the official 21k students). Every weight is copied by its path. The classifier is what
may differ, and ``head`` says what to do with it:

- ``'keep'``: copy it too; its class count must match the model's.
- ``'reinit'``: leave the model's freshly initialised classifier (e.g. 21,841 -> 1,000
  classes with no known correspondence).
- a path to a class-index file: one integer per line, line ``c`` giving the checkpoint
  class that the model's class ``c`` is (e.g. the ImageNet-1k classes inside 21k); the
  classifier's rows are gathered through it, so the fine-tuning starts from the
  pretrained decision for each class.
"""
import os

import numpy as np
from flax import nnx

from tinyvit_jax import model_checkpoint
from tinyvit_jax.data.sources import class_index
from tinyvit_jax.models import WEIGHTS, hub

# Top-level modules holding a classifier (TinyViT's head.fc, DeiT's head and head_dist,
# the convnets' fc).
_CLASSIFIERS = ('head', 'head_dist', 'fc')


def load_into(model: nnx.Module, directory: str, *, head: str = 'keep') -> None:
  """Copies the checkpoint's weights into ``model`` in place (see the module doc)."""
  if not hub.is_hub_name(directory) and not os.path.exists(directory):
    raise model_checkpoint.CheckpointError(
        f'init.checkpoint {directory!r} does not exist. Give a directory written by a run\'s '
        'export stage or by python -m tinyvit_jax.convert --model NAME --from FILE --out DIR.')
  meta = model_checkpoint.read_model_json(directory)
  source = model_checkpoint.restore_model(directory)
  source_classes = source.num_classes
  mapping = None
  if head not in ('keep', 'reinit'):
    if not os.path.isfile(head):
      raise FileNotFoundError(f'init.head={head!r} is neither keep, reinit nor a '
                              'class-index file.')
    mapping = class_index.read_class_index(head, model.num_classes, source_classes, target='model',
                                           source='checkpoint', unique=False)
  ours = nnx.state(model, WEIGHTS)
  theirs = dict(nnx.to_flat_state(nnx.state(source, WEIGHTS)))
  problems = []
  for path, variable in nnx.to_flat_state(ours):
    classifier = (str(path[0]) in _CLASSIFIERS and variable.value.ndim >= 1
                  and theirs.get(path) is not None
                  and theirs[path].value.shape[-1] == source_classes)
    if path not in theirs:
      problems.append(f'{"/".join(map(str, path))}: not in the checkpoint')
      continue
    value = np.asarray(theirs[path].value)
    if classifier and head == 'reinit':
      continue
    if classifier and mapping is not None:
      value = value[..., mapping]
    if value.shape != variable.value.shape:
      hint = (f' The checkpoint has {source_classes} classes and the model '
              f'{model.num_classes}: set --config.init.head=reinit, or a class-index file.'
              if classifier else '')
      problems.append(f'{"/".join(map(str, path))}: checkpoint {value.shape}, model '
                      f'{variable.value.shape}.{hint}')
      continue
    variable.value = value.astype(variable.value.dtype)
  if problems:
    raise model_checkpoint.CheckpointError(
        f'Cannot start {type(model).__name__} from {directory} ({meta["model"]}): '
        + ' '.join(problems))
  nnx.update(model, ours)
