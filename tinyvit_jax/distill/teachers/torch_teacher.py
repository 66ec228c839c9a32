"""Teachers from PyTorch for the save pass: a timm model by name, or any torch module.

The store decouples teacher from student, so the teacher may come from any framework:
these adapters return the same ``record.Teacher`` as our own checkpoints do
(``jax_teacher.from_checkpoint``), and the save pass cannot tell them apart. They run on
the host (CPU or the host's CUDA GPU), not in the student's jitted step:
``factory.make_teacher`` builds them from a config and reads them through a class-index
file if it names one.

Images. The save pass hands the teacher the student's augmented views, normalised with
the augmentation config's mean and std (``x_s = (x - mean_s) / std_s``, x in [0, 1]).
A torch teacher was trained with its own normalisation, so each view is un-normalised
and re-normalised with the teacher's mean and std (timm: the model's ``pretrained_cfg``)
by ``record.renormalise``. There is no second augmentation: the teacher sees the very
pixels the student will. The views travel through host numpy (a jax array may
be sharded over several devices, which one DLPack capsule cannot carry; next to the
teacher's forward pass the copy is negligible): NHWC numpy permuted to NCHW is already
channels-last in memory, which is the layout the model is put in. The forward pass runs
under ``torch.no_grad`` in eval mode on ``device`` (CPU or CUDA); the softmax is taken in
float32.

The manifest's ``teacher_name`` names the adapter and model (``timm:resnet18``,
``torch:package.module:factory``);
``teacher_checkpoint_hash`` is the sha256 of the checkpoint file's bytes (without a file,
of the module's initial state_dict). torch and timm are imported only when used.
"""
import functools
import hashlib
import importlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from tinyvit_jax import errors
from tinyvit_jax import model_checkpoint
from tinyvit_jax import normalisation
from tinyvit_jax import torch_state_dicts
from tinyvit_jax.distill.teachers import record


def from_timm(model_name: str, checkpoint_path: str, *, num_classes: int | None = None,
              device: str = 'cpu', input_mean=normalisation.IMAGENET_MEAN,
              input_std=normalisation.IMAGENET_STD, **model_kwargs) -> record.Teacher:
  """``timm.create_model(model_name, num_classes=..., **model_kwargs)`` with the weights
  of the local state_dict file ``checkpoint_path`` (.pth/.pt or .safetensors).

  ``num_classes`` defaults to the checkpoint's head size. ``input_mean``/``input_std``
  are the student's normalisation (the augmentation config's ``mean``/``std``); the
  model's own comes from its ``pretrained_cfg``. An official Cream TinyViT checkpoint is
  renamed to timm's keys first.
  """
  state_dict = _read_state_dict(checkpoint_path)  # a bad file fails before timm's import
  import timm
  if model_name.startswith('tiny_vit') and torch_state_dicts.is_cream_state_dict(state_dict):
    state_dict = torch_state_dicts.cream_to_timm(state_dict)
  if num_classes is None:
    num_classes = _head_classes(state_dict, timm.models.get_pretrained_cfg(model_name))
  model = timm.create_model(model_name, pretrained=False, num_classes=num_classes, **model_kwargs)
  _load(model, state_dict, f'timm:{model_name}', checkpoint_path)
  cfg = model.pretrained_cfg
  return _torch_teacher(model, f'timm:{model_name}', _file_hash(checkpoint_path), model.num_classes,
                        device=device, mean=cfg['mean'], std=cfg['std'], input_mean=input_mean,
                        input_std=input_std)


def from_torch_module(import_path: str, checkpoint_path: str | None = None, *, num_classes: int,
                      mean, std, device: str = 'cpu', input_mean=normalisation.IMAGENET_MEAN,
                      input_std=normalisation.IMAGENET_STD, **factory_kwargs) -> record.Teacher:
  """The ``torch.nn.Module`` built by ``import_path`` = ``'package.module:factory'``.

  ``factory(**factory_kwargs)`` must return a module mapping (B, 3, H, W) images,
  normalised with ``mean``/``std`` (in [0, 1] units), to (B, num_classes) logits. Its
  weights are the local state_dict file ``checkpoint_path`` if given, else whatever the
  factory loaded itself.
  """
  factory = resolve(import_path)
  model = factory(**factory_kwargs)
  name = f'torch:{import_path}'
  if checkpoint_path is not None:
    _load(model, _read_state_dict(checkpoint_path), name, checkpoint_path)
    digest = _file_hash(checkpoint_path)
  else:
    digest = _state_dict_hash(model.state_dict())
  return _torch_teacher(model, name, digest, num_classes, device=device, mean=mean, std=std,
                        input_mean=input_mean, input_std=input_std)


class UnresolvedTeacher(errors.UserError, ImportError):
  """``distill.teacher_model`` names no importable factory."""


def resolve(import_path: str):
  """``'package.module:attribute'`` -> the attribute, or an error naming what is missing."""
  module_name, colon, attribute = import_path.partition(':')
  if not colon or not module_name or not attribute:
    raise UnresolvedTeacher(f'Teacher import path {import_path!r} must look like '
                            "'package.module:factory'.")
  try:
    module = importlib.import_module(module_name)
  except ImportError as error:
    raise UnresolvedTeacher(f'Teacher import path {import_path!r} does not resolve: module '
                            f'{module_name!r} cannot be imported ({error}). Is its package '
                            'installed, or on PYTHONPATH?') from error
  if not hasattr(module, attribute):
    raise UnresolvedTeacher(f'Teacher import path {import_path!r} does not resolve: module '
                            f'{module_name!r} ({module.__file__}) has no {attribute!r}.')
  return getattr(module, attribute)


def share_gpu_with_jax(distills) -> None:
  """Has JAX allocate GPU memory as it needs it when any of ``distills`` (config sections)
  names a torch teacher on a CUDA device, the device JAX uses too.

  JAX takes 75% of a GPU's memory when it starts, which would leave such a teacher too
  little. ``main`` calls this before JAX starts; JAX then allocates only what it uses
  (``XLA_PYTHON_CLIENT_PREALLOCATE=false``), so both fit, and ``release_gpu_memory``
  hands torch's cache back once the save pass is done. A ``XLA_PYTHON_CLIENT_*`` setting
  of the user's wins.
  """
  if any(
      distill.get('teacher_adapter', 'ours') in (
          'timm', 'torch') and str(distill.get('teacher_device', 'cpu')).startswith('cuda')
      for distill in distills):
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')


def release_gpu_memory() -> None:
  """Returns the memory torch keeps cached on the GPU, for the training that follows."""
  torch = sys.modules.get('torch')
  if torch is not None and torch.cuda.is_available():
    torch.cuda.empty_cache()


def _torch_teacher(model, name: str, digest: str, num_classes: int, *, device: str, mean, std,
                   input_mean, input_std) -> record.Teacher:
  """A Teacher running ``model`` (see the module doc for the image handling)."""
  import torch
  model.eval()
  model.to(device, memory_format=torch.channels_last)
  normalise = record.renormalise(input_mean, input_std, mean, std)

  @torch.no_grad()
  def probabilities(images):
    views = normalise(np.asarray(jax.device_get(images), np.float32))
    views = np.array(views)  # a copy torch may write to
    nchw = torch.from_numpy(views).permute(0, 3, 1, 2).to(device)  # channels-last strides
    logits = model(nchw)
    if not isinstance(logits, torch.Tensor) or logits.shape != (len(views), num_classes):
      got = (tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__)
      raise ValueError(f'The teacher {name} returned {got}; expected ({len(views)}, '
                       f'{num_classes}) logits, one row per image.')
    return jnp.asarray(torch.softmax(logits.float(), dim=-1).cpu().numpy())

  return record.Teacher(name, digest, num_classes, probabilities)


def _read_state_dict(path: str) -> dict:
  """A torch state_dict from a .safetensors or torch file (its 'model'/'state_dict'
  entry if it has one), as torch tensors; nothing is downloaded."""
  return torch_state_dicts.load_state_dict_file(path, as_torch=True)


def _load(model, state_dict: dict, name: str, path: str) -> None:
  """``load_state_dict(strict=True)``, its error naming the teacher and the file."""
  try:
    model.load_state_dict(state_dict, strict=True)
  except RuntimeError as error:
    raise model_checkpoint.CheckpointError(
        f'The checkpoint {path} does not fit the teacher {name} (a head of another size? '
        f'set its num_classes):\n{error}') from None


def _head_classes(state_dict: dict, cfg) -> int | None:
  """The class count of the checkpoint's classifier (timm's ``pretrained_cfg.classifier``)."""
  classifier = cfg.classifier if cfg is not None else None
  if isinstance(classifier, (tuple, list)):
    classifier = classifier[0]
  weight = state_dict.get(f'{classifier}.weight')
  return None if weight is None else int(weight.shape[0])


def _file_hash(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(functools.partial(f.read, 1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _state_dict_hash(state_dict: dict) -> str:
  """sha256 over a torch state_dict's names, dtypes, shapes and bytes, in name order."""
  digest = hashlib.sha256()
  import torch
  for key in sorted(state_dict):
    tensor = state_dict[key].detach().cpu().contiguous()
    digest.update(f'{key}:{tensor.dtype}:{tuple(tensor.shape)};'.encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
  return digest.hexdigest()
