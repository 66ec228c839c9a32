"""PyTorch checkpoints as state_dicts in timm's names, whatever file or layout they come in.

A .safetensors file or a torch pickle (its ``model`` / ``state_dict`` entry if it has one;
Cream's training checkpoints, whose yacs config no unpickler of weights alone accepts, are
read with every class but tensors made inert). Official Cream TinyViT checkpoints and
OpenAI CLIP visual towers (Cream's CLIP teacher among them) are renamed to timm's names;
``models.timm_weights`` maps those onto our models.
"""
import os
import pickle
import re

import numpy as np

from tinyvit_jax import model_checkpoint
from tinyvit_jax.models.timm_weights import as_numpy

# Cream (microsoft/Cream, TinyViT) -> timm key renaming, applied in order.
_CREAM_TO_TIMM = [
    (r'^patch_embed\.seq\.0\.', 'patch_embed.conv1.'),
    (r'^patch_embed\.seq\.2\.', 'patch_embed.conv2.'),
    (r'\.c\.', '.conv.'),
    (r'^norm_head\.', 'head.norm.'),
    (r'^head\.(weight|bias)$', r'head.fc.\1'),
    (r'^layers\.(\d+)\.blocks\.', r'stages.\1.blocks.'),
]


def cream_to_timm(state_dict: dict) -> dict:
  """Renames an official Cream TinyViT state_dict to timm's keys.

  Cream keeps the patch merging at the end of layer k; timm at the start of stage k+1.
  """
  out = {}
  for key, value in state_dict.items():
    m = re.match(r'^layers\.(\d+)\.downsample\.(.*)$', key)
    if m:
      key = f'stages.{int(m.group(1)) + 1}.downsample.{m.group(2)}'
    for pattern, repl in _CREAM_TO_TIMM:
      key = re.sub(pattern, repl, key)
    out[key] = value
  return out


def is_cream_state_dict(state_dict: dict) -> bool:
  return any(k.startswith(('layers.', 'patch_embed.seq.', 'norm_head.')) for k in state_dict)


# OpenAI CLIP's visual tower -> timm (timm's _convert_openai_clip), applied in order.
_OPENAI_CLIP_TO_TIMM = [
    ('conv1.', 'patch_embed.proj.'),
    ('positional_embedding', 'pos_embed'),
    ('class_embedding', 'cls_token'),
    ('transformer.resblocks.', 'blocks.'),
    ('ln_pre.', 'norm_pre.'),
    ('ln_post.', 'norm.'),
    ('ln_1.', 'norm1.'),
    ('ln_2.', 'norm2.'),
    ('attn.in_proj_', 'attn.qkv.'),
    ('attn.out_proj.', 'attn.proj.'),
    ('mlp.c_fc.', 'mlp.fc1.'),
    ('mlp.c_proj.', 'mlp.fc2.'),
]


def openai_clip_to_timm(state_dict: dict) -> dict:
  """Renames an OpenAI CLIP state_dict's ``visual.`` tower to timm's ViT keys (the text
  tower is left out). Its bias-free ``proj`` (width, out), used as ``x @ proj``, becomes
  a Linear: ``proj.weight`` when a ``head`` follows it (Cream's CLIP teacher), else
  ``head.weight`` with a zero bias, as timm loads a bare CLIP tower."""
  out = {}
  for key, value in state_dict.items():
    if key.startswith('visual.'):
      key = key[len('visual.'):]
      for old, new in _OPENAI_CLIP_TO_TIMM:
        key = key.replace(old, new)
      if key in ('cls_token', 'pos_embed'):  # (width,) and (tokens, width): timm's batched
        value = value.reshape((1,) * (3 - value.ndim) + tuple(value.shape))
      out[key] = value
    elif key.startswith('head.'):
      out[key] = value
  if 'proj' in out:
    proj = as_numpy(out.pop('proj')).T
    if 'head.weight' in out:
      out['proj.weight'] = proj
    else:
      out['head.weight'], out['head.bias'] = proj, np.zeros(proj.shape[0], proj.dtype)
  return out


def is_openai_clip_state_dict(state_dict: dict) -> bool:
  return 'visual.class_embedding' in state_dict


def read_state_dict(path: str) -> dict:
  """Reads a .safetensors file or a torch checkpoint (its ``model`` / ``state_dict``
  entry if present), with Cream and OpenAI CLIP names converted to timm's."""
  sd = load_state_dict_file(path)
  if is_openai_clip_state_dict(sd):
    return openai_clip_to_timm(sd)
  return cream_to_timm(sd) if is_cream_state_dict(sd) else sd


def load_state_dict_file(path: str, *, as_torch: bool = False) -> dict:
  """The state_dict in a .safetensors or torch file (its ``model`` / ``state_dict`` entry
  if it has one): numpy arrays from .safetensors, unless ``as_torch``. A path holding no
  state_dict is a ``CheckpointError`` naming it."""
  expected = 'expected a timm/Cream state_dict file (.pth, .pt, .bin or .safetensors)'
  if not os.path.isfile(path):
    state = 'is a directory' if os.path.isdir(path) else 'does not exist'
    raise model_checkpoint.CheckpointError(f'{path}: {state}; {expected}.')
  if not os.path.getsize(path):
    raise model_checkpoint.CheckpointError(f'{path}: is empty; {expected}.')
  if not path.endswith('.safetensors'):
    try:
      import torch
    except ImportError:
      raise model_checkpoint.CheckpointError(
          f'{path}: reading it needs torch (pip install torch), or convert it to '
          '.safetensors first.') from None
  try:
    if path.endswith('.safetensors'):
      if as_torch:
        from safetensors.torch import load_file
      else:
        from safetensors.numpy import load_file
      sd = load_file(path)
    else:
      try:
        sd = torch.load(path, map_location='cpu', weights_only=True)
      except pickle.UnpicklingError:
        # weights_only refuses every class torch does not vet, e.g. the yacs CfgNode that
        # Cream's checkpoints keep under 'config': read again, those classes made inert.
        sd = torch.load(path, map_location='cpu', weights_only=False, pickle_module=_InertPickle)
  except Exception as error:  # torch and safetensors raise many types for a file not theirs
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    raise model_checkpoint.CheckpointError(
        f'{path}: unreadable ({type(error).__name__}: {reason[:120]}); {expected}.') from None
  for entry in ('model', 'state_dict'):
    if isinstance(sd, dict) and isinstance(sd.get(entry), dict):
      sd = sd[entry]
  if not (isinstance(sd, dict) and sd and all(hasattr(v, 'shape') for v in sd.values())):
    raise model_checkpoint.CheckpointError(
        f'{path}: holds a {type(sd).__name__}, not a state_dict of named tensors; {expected}.')
  return sd


class _Inert:
  """Stands in for any class a checkpoint pickles beside its tensors: it is built from
  whatever the pickle gives it and keeps nothing, so no code of the file's runs."""

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __setstate__(self, state):
    del state

  def __setitem__(self, key, value):  # a dict subclass's items (yacs' CfgNode)
    del key, value

  def append(self, value):  # a list subclass's items
    del value

  def extend(self, values):
    del values


# The globals a torch.save'd state_dict needs (torch resolves its storage types itself).
_TENSOR_GLOBALS = {('collections', 'OrderedDict'), ('torch._utils', '_rebuild_tensor_v2'),
                   ('torch._utils', '_rebuild_parameter')}


class _InertUnpickler(pickle.Unpickler):
  """Unpickles tensors and plain containers; every other global becomes ``_Inert``."""

  def find_class(self, module, name):
    if (module, name) in _TENSOR_GLOBALS:
      return super().find_class(module, name)
    return _Inert


class _InertPickle:
  """The ``pickle_module`` torch.load takes: ``_InertUnpickler`` in place of pickle's."""
  Unpickler = _InertUnpickler

  @staticmethod
  def load(file, **kwargs):
    return _InertUnpickler(file, **kwargs).load()
