"""Teachers from PyTorch for the save pass: a timm model by name, or any torch module.

The store decouples teacher from student, so the teacher may come from any framework:
these adapters return the same ``teacher.Teacher`` record as our own checkpoints do
(``teacher.from_checkpoint``), and the save pass cannot tell them apart.

Images. The save pass hands the teacher the student's augmented views, normalised with
the augmentation config's mean and std (``x_s = (x - mean_s) / std_s``, x in [0, 1]).
A torch teacher was trained with its own normalisation, so each view is un-normalised
and re-normalised with the teacher's mean and std (timm: the model's ``pretrained_cfg``)
as one per-channel affine map, ``x_t = x_s * std_s / std_t + (mean_s - mean_t) / std_t``;
when the two agree nothing is changed. There is no second augmentation: the teacher sees
the very pixels the student will. The views travel through host numpy (a jax array may
be sharded over several devices, which one DLPack capsule cannot carry; next to the
teacher's forward pass the copy is negligible): NHWC numpy permuted to NCHW is already
channels-last in memory, which is the layout the model is put in. The forward pass runs
under ``torch.no_grad`` in eval mode on ``device`` (CPU or CUDA); the softmax is taken in
float32.

Class-index mapping (``map_classes``). A teacher over other classes than the student's
(e.g. a 21k teacher, a 1k student) is read through a class-index file: line c holds the
teacher class of student class c. The returned row is the teacher's probabilities
gathered at those classes, *not* renormalised: it has the student's C classes and sums
to 1 minus the mass of the unmapped teacher classes. That mass thus joins the tail: the
store keeps the row's top-k, and the dense rebuild (``targets.dense_targets``) spreads
``1 - sum(top-k)`` (the mapped classes outside the top-k *and* the unmapped mass)
uniformly over the C - k classes outside the top-k. With k = C there is no tail and the
rebuilt target is the mapped row itself, summing to less than 1.

The manifest's ``teacher_name`` names the adapter and model (``timm:resnet18``,
``torch:package.module:factory``) and, with a mapping, the class-index file's hash;
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

from tinyvit_jax import convert
from tinyvit_jax import model_checkpoint
from tinyvit_jax import normalisation
from tinyvit_jax.data.sources import class_index as class_index_lib
from tinyvit_jax.distill import teacher as teacher_lib

ADAPTERS = ('ours', 'timm', 'torch')


def from_timm(model_name: str, checkpoint_path: str, *, num_classes: int | None = None,
              device: str = 'cpu', class_index: str | None = None,
              input_mean=normalisation.IMAGENET_MEAN,
              input_std=normalisation.IMAGENET_STD, **model_kwargs) -> teacher_lib.Teacher:
  """``timm.create_model(model_name, num_classes=..., **model_kwargs)`` with the weights
  of the local state_dict file ``checkpoint_path`` (.pth/.pt or .safetensors).

  ``num_classes`` defaults to the checkpoint's head size. ``input_mean``/``input_std``
  are the student's normalisation (the augmentation config's ``mean``/``std``); the
  model's own comes from its ``pretrained_cfg``. An official Cream TinyViT checkpoint is
  renamed to timm's keys first.
  """
  state_dict = _read_state_dict(checkpoint_path)  # a bad file fails before timm's import
  import timm
  if model_name.startswith('tiny_vit') and convert.is_cream_state_dict(state_dict):
    state_dict = convert.cream_to_timm(state_dict)
  if num_classes is None:
    num_classes = _head_classes(state_dict, timm.models.get_pretrained_cfg(model_name))
  model = timm.create_model(model_name, pretrained=False, num_classes=num_classes,
                            **model_kwargs)
  _load(model, state_dict, f'timm:{model_name}', checkpoint_path)
  cfg = model.pretrained_cfg
  teacher = _torch_teacher(model, f'timm:{model_name}', _file_hash(checkpoint_path),
                           model.num_classes, device=device,
                           mean=cfg['mean'], std=cfg['std'], input_mean=input_mean,
                           input_std=input_std)
  return map_classes(teacher, class_index) if class_index else teacher


def from_torch_module(import_path: str, checkpoint_path: str | None = None, *,
                      num_classes: int, mean, std, device: str = 'cpu',
                      class_index: str | None = None,
                      input_mean=normalisation.IMAGENET_MEAN,
                      input_std=normalisation.IMAGENET_STD,
                      **factory_kwargs) -> teacher_lib.Teacher:
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
  teacher = _torch_teacher(model, name, digest, num_classes, device=device, mean=mean,
                           std=std, input_mean=input_mean, input_std=input_std)
  return map_classes(teacher, class_index) if class_index else teacher


def resolve(import_path: str):
  """``'package.module:attribute'`` -> the attribute, or an error naming what is missing."""
  module_name, colon, attribute = import_path.partition(':')
  if not colon or not module_name or not attribute:
    raise ValueError(f'Teacher import path {import_path!r} must look like '
                     "'package.module:factory'.")
  try:
    module = importlib.import_module(module_name)
  except ImportError as error:
    raise ImportError(f'Teacher import path {import_path!r} does not resolve: module '
                      f'{module_name!r} cannot be imported ({error}). Is its package '
                      'installed, or on PYTHONPATH?') from error
  if not hasattr(module, attribute):
    raise ImportError(f'Teacher import path {import_path!r} does not resolve: module '
                      f'{module_name!r} ({module.__file__}) has no {attribute!r}.')
  return getattr(module, attribute)


def map_classes(teacher: teacher_lib.Teacher, class_index: str,
                num_classes: int | None = None) -> teacher_lib.Teacher:
  """``teacher`` read through a class-index file (module doc): its rows gathered at the
  file's classes, the rest of its mass left to the tail. Works for any adapter.

  ``num_classes``, the student's, is checked against the file's line count if given.
  """
  mapping = class_index_lib.read_class_index(class_index, num_classes, teacher.num_classes)
  with open(class_index, 'rb') as f:
    file_hash = hashlib.sha256(f.read()).hexdigest()
  gather = jax.jit(lambda probabilities: jnp.take(probabilities, mapping, axis=-1))
  return teacher_lib.Teacher(
      f'{teacher.name}+classes:{os.path.basename(class_index)}:{file_hash[:16]}',
      teacher.checkpoint_hash, len(mapping),
      lambda images: gather(teacher.probabilities(images)))


def check_classes(teacher: teacher_lib.Teacher, num_classes: int) -> None:
  """Refuses a teacher whose class count is not the student's ``num_classes``."""
  if teacher.num_classes != num_classes:
    raise ValueError(
        f'The teacher {teacher.name} has {teacher.num_classes} classes and the student '
        f'{num_classes}: its rows cannot be the student\'s targets. Give a class-index file '
        '(distill.teacher_class_index: line c = the teacher class of student class c), '
        'or a teacher over the student\'s classes.')


def share_gpu_with_jax(distills) -> None:
  """Has JAX allocate GPU memory as it needs it when any of ``distills`` (config sections)
  names a torch teacher on a CUDA device, the device JAX uses too.

  JAX takes 75% of a GPU's memory when it starts, which would leave such a teacher too
  little. ``main`` calls this before JAX starts; JAX then allocates only what it uses
  (``XLA_PYTHON_CLIENT_PREALLOCATE=false``), so both fit, and ``release_gpu_memory``
  hands torch's cache back once the save pass is done. A ``XLA_PYTHON_CLIENT_*`` setting
  of the user's wins.
  """
  if any(distill.get('teacher_adapter', 'ours') in ('timm', 'torch')
         and str(distill.get('teacher_device', 'cpu')).startswith('cuda')
         for distill in distills):
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')


def release_gpu_memory() -> None:
  """Returns the memory torch keeps cached on the GPU, for the training that follows."""
  torch = sys.modules.get('torch')
  if torch is not None and torch.cuda.is_available():
    torch.cuda.empty_cache()


def make_teacher(distill, aug=None) -> teacher_lib.Teacher:
  """The teacher a config's ``distill`` section names (keys below), over ``aug``'s
  normalisation (``aug.mean``/``aug.std``, default ImageNet's).

  ``teacher_adapter``: 'ours' (``teacher``: our checkpoint dir), 'timm' (``teacher``: a
  state_dict file of the timm model ``teacher_model``) or 'torch' (``teacher``: a
  state_dict file or '', ``teacher_model``: 'package.module:factory', ``teacher_mean``
  and ``teacher_std``: its normalisation). ``teacher_kwargs`` go to the constructor,
  ``teacher_num_classes`` (0: the checkpoint's) is the head size, ``teacher_device`` the
  torch device, and ``teacher_class_index`` an optional class-index file.
  """
  adapter = distill.get('teacher_adapter', 'ours')
  kwargs = dict(distill.get('teacher_kwargs', None) or {})
  class_index = distill.get('teacher_class_index', '') or None
  inputs = dict(input_mean=tuple((aug or {}).get('mean', normalisation.IMAGENET_MEAN)),
                input_std=tuple((aug or {}).get('std', normalisation.IMAGENET_STD)))
  torch_args = dict(device=distill.get('teacher_device', 'cpu'), class_index=class_index,
                    **inputs, **kwargs)
  if adapter == 'ours':
    teacher = teacher_lib.from_checkpoint(distill.teacher, **kwargs)
    return map_classes(teacher, class_index) if class_index else teacher
  if adapter == 'timm':
    return from_timm(distill.teacher_model, distill.teacher,
                     num_classes=distill.get('teacher_num_classes', 0) or None, **torch_args)
  if adapter == 'torch':
    return from_torch_module(distill.teacher_model, distill.teacher or None,
                             num_classes=distill.teacher_num_classes,
                             mean=tuple(distill.teacher_mean), std=tuple(distill.teacher_std),
                             **torch_args)
  raise ValueError(f'distill.teacher_adapter={adapter!r}; expected one of {ADAPTERS}.')


def _torch_teacher(model, name: str, digest: str, num_classes: int, *, device: str, mean,
                   std, input_mean, input_std) -> teacher_lib.Teacher:
  """A Teacher running ``model`` (see the module doc for the image handling)."""
  import torch
  model.eval()
  model.to(device, memory_format=torch.channels_last)
  scale = np.asarray(input_std, np.float32) / np.asarray(std, np.float32)
  shift = ((np.asarray(input_mean, np.float32) - np.asarray(mean, np.float32))
           / np.asarray(std, np.float32))
  same = np.allclose(scale, 1, rtol=0, atol=1e-7) and np.allclose(shift, 0, rtol=0, atol=1e-7)

  @torch.no_grad()
  def probabilities(images):
    views = np.array(jax.device_get(images), np.float32)  # a copy torch may write to
    if not same:
      views = views * scale + shift
    nchw = torch.from_numpy(views).permute(0, 3, 1, 2).to(device)  # channels-last strides
    logits = model(nchw)
    if not isinstance(logits, torch.Tensor) or logits.shape != (len(views), num_classes):
      got = (tuple(logits.shape) if isinstance(logits, torch.Tensor)
             else type(logits).__name__)
      raise ValueError(f'The teacher {name} returned {got}; expected ({len(views)}, '
                       f'{num_classes}) logits, one row per image.')
    return jnp.asarray(torch.softmax(logits.float(), dim=-1).cpu().numpy())

  return teacher_lib.Teacher(name, digest, num_classes, probabilities)


def _read_state_dict(path: str) -> dict:
  """A torch state_dict from a .safetensors or torch file (its 'model'/'state_dict'
  entry if it has one), as torch tensors; nothing is downloaded."""
  return convert.load_state_dict_file(path, as_torch=True)


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
