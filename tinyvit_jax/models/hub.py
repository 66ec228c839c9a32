"""Pretrained weights by timm's names, through the Hugging Face Hub, in timm's layout both ways.

A name is ``ARCH[.TAG]`` (a registered model, e.g. ``tiny_vit_21m_224.dist_in22k``; timm's
default tag without one) or ``hf-hub:ORG/REPO[@REVISION]``. Its repo holds timm's
``config.json`` (architecture, class count, ``model_args``, ``pretrained_cfg`` with the
input size, interpolation, crop and mean/std, maybe ``label_names``) and
``model.safetensors``. ``huggingface_hub`` downloads them: its cache, ``HF_HUB_OFFLINE``
and token (``HF_TOKEN``, ``hf auth login``) are the user's. A pickled
``pytorch_model.bin`` is read only when asked (``allow_pickle``), by
``torch.load(weights_only=True)``. ``model_json`` gives what our ``model.json`` records of
a checkpoint, so every reader of checkpoints takes a Hub name as it takes a directory.
"""
import json
import os
import re

from flax import nnx

from tinyvit_jax import errors
from tinyvit_jax import writes
from tinyvit_jax.models import registry, timm_weights

PREFIX = 'hf-hub:'
CONFIG = 'config.json'
SAFE_WEIGHTS = 'model.safetensors'
PICKLED_WEIGHTS = 'pytorch_model.bin'

# timm's default tag (its first pretrained config) of each registered model it publishes.
DEFAULT_TAGS = {
    'deit_base_distilled_patch16_224': 'fb_in1k',
    'deit_base_distilled_patch16_384': 'fb_in1k',
    'deit_base_patch16_224': 'fb_in1k',
    'deit_base_patch16_384': 'fb_in1k',
    'deit_small_distilled_patch16_224': 'fb_in1k',
    'deit_small_patch16_224': 'fb_in1k',
    'deit_tiny_distilled_patch16_224': 'fb_in1k',
    'deit_tiny_patch16_224': 'fb_in1k',
    'regnety_016': 'tv2_in1k',
    'regnety_160': 'sw_in12k_ft_in1k',
    'resnet18': 'a1_in1k',
    'resnet34': 'a1_in1k',
    'resnet50': 'a1_in1k',
    'tiny_vit_5m_224': 'dist_in22k',
    'tiny_vit_11m_224': 'dist_in22k',
    'tiny_vit_21m_224': 'dist_in22k',
    'tiny_vit_21m_384': 'dist_in22k_ft_in1k',
    'tiny_vit_21m_512': 'dist_in22k_ft_in1k',
    'vit_base_patch16_224': 'augreg2_in21k_ft_in1k',
    'vit_base_patch32_224': 'augreg_in21k_ft_in1k',
    'vit_large_patch16_224': 'augreg_in21k_ft_in1k',
    'vit_base_patch16_clip_224': 'laion2b_ft_in12k_in1k',
    'vit_base_patch16_clip_quickgelu_224': 'metaclip_2pt5b',
    'vit_base_patch32_clip_224': 'laion2b_ft_in12k_in1k',
    'vit_huge_patch14_clip_224': 'laion2b_ft_in12k_in1k',
    'vit_huge_patch14_clip_quickgelu_224': 'dfn5b',
    'vit_large_patch14_clip_224': 'laion2b_ft_in12k_in1k',
    'vit_large_patch14_clip_336': 'laion2b_ft_in12k_in1k',
    'vit_large_patch14_clip_quickgelu_224': 'dfn2b',
    'vit_large_patch14_clip_quickgelu_336': 'openai',
}


class FolderExists(errors.UserError, FileExistsError):
  """The folder a Hub layout would be written to is there already: nothing is overwritten."""


class HubError(errors.UserError, ValueError):
  """A Hub name that gives no model here: unknown, unreachable, not cached, gated,
  unregistered or unfitting weights; one line that says which and what to do."""


def is_hub_name(name: str) -> bool:
  return isinstance(name, str) and name.startswith(PREFIX)


def resolve(name: str) -> tuple[str, str, str | None]:
  """``(repo_id, revision, architecture)`` of a name; the architecture is None for an
  ``hf-hub:`` name, whose ``config.json`` says it. timm keeps the QuickGELU CLIP towers'
  weights in the repo of the GELU model they share them with."""
  if is_hub_name(name):
    repo, _, revision = name[len(PREFIX):].partition('@')
    if not re.fullmatch(r'[\w.-]+/[\w.-]+', repo):
      raise HubError(f'{name!r}: expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION.')
    return repo, revision or 'main', None
  arch, _, tag = name.partition('.')
  try:
    registry.model_info(arch)
  except ValueError as error:
    raise HubError(str(error)) from None
  tag = tag or DEFAULT_TAGS.get(arch)
  if not tag:
    raise HubError(f'{arch} has no pretrained weights on the Hub; give a checkpoint of ours, '
                   'or an hf-hub:ORG/NAME repo in timm\'s layout.')
  return f'timm/{arch.replace("_quickgelu", "")}.{tag}', 'main', arch


def model_json(name: str) -> dict:
  """What our ``model.json`` holds for the Hub model ``name``: its registered architecture,
  constructor arguments and metadata (the eval preprocessing, class names if the repo has
  them, and where the weights came from)."""
  repo, revision, arch = resolve(name)
  with open(_download(repo, CONFIG, revision)) as f:
    config = json.load(f)
  arch = arch or config.get('architecture', '')
  try:
    info = registry.model_info(arch)
  except ValueError as error:
    raise HubError(f'{repo}@{revision}: architecture {arch!r} is not registered here. '
                   f'{str(error).split(". ", 1)[-1]}') from None
  if not isinstance(config.get('num_classes'), int):
    raise HubError(f'{repo}@{revision}/{CONFIG}: no "num_classes"; not a model in timm\'s '
                   'Hub layout.')
  cfg = config.get('pretrained_cfg', {})
  kwargs = dict(_our_args(arch, config.get('model_args') or {}), num_classes=config['num_classes'])
  preprocess = dict(image_size=int(cfg.get('input_size', (3, info.input_size))[-1]),
                    crop_pct=float(cfg.get('crop_pct', info.crop_pct)),
                    interpolation=cfg.get('interpolation', 'bicubic'),
                    mean=list(cfg.get('mean', info.mean)), std=list(cfg.get('std', info.std)))
  metadata = dict(preprocess=preprocess, hub=dict(repo=repo, revision=revision))
  labels = config.get('label_names')
  if isinstance(labels, list) and len(labels) == kwargs['num_classes']:
    metadata['labels'] = labels
  return dict(model=arch, kwargs=kwargs, metadata=metadata)


def _our_args(arch: str, model_args: dict) -> dict:
  """timm's ``model_args`` as our constructors take them: a square ``img_size`` as one
  number; ``in_chans=3`` and, outside the ViT family, ``global_pool='avg'`` (the only
  pooling TinyViT and the convnets have) left out, as ours build those by default."""
  args = dict(model_args)
  size = args.get('img_size')
  if isinstance(size, (list, tuple)) and len(set(size)) == 1:
    args['img_size'] = int(size[0])
  if args.get('in_chans') == 3:
    del args['in_chans']
  if args.get('global_pool') == 'avg' and not arch.startswith(('vit_', 'deit_')):
    del args['global_pool']
  return args


def load_model(name: str, *, rngs: nnx.Rngs | None = None, allow_pickle: bool = False,
               **overrides) -> nnx.Module:
  """The Hub model ``name`` with its weights. ``overrides`` (e.g. ``dtype``) change how it
  runs; ``allow_pickle`` reads a repo that has only ``pytorch_model.bin``."""
  meta = model_json(name)
  repo, revision = meta['metadata']['hub']['repo'], meta['metadata']['hub']['revision']
  try:
    model = registry.create_unfilled(meta['model'], rngs=rngs, **{**meta['kwargs'], **overrides})
  except TypeError as error:  # a model_args entry our constructor does not take
    raise HubError(f'{repo}@{revision}/{CONFIG}: model_args {meta["kwargs"]} do not build our '
                   f'{meta["model"]} ({error}).') from None
  try:
    timm_weights.load_timm_state_dict(model, _state_dict(repo, revision, allow_pickle))
  except timm_weights.StateDictMismatch as error:
    raise HubError(
        f'{repo}@{revision}: its weights do not fit {meta["model"]} with '
        f'{meta["kwargs"]}; first differences: {"; ".join(error.offenders[:3])}.') from None
  return model


def _state_dict(repo: str, revision: str, allow_pickle: bool) -> dict:
  path = _download(repo, SAFE_WEIGHTS, revision, missing_ok=True)
  if path:
    from safetensors.numpy import load_file
    return load_file(path)
  if not allow_pickle:
    raise HubError(f'{repo}@{revision} has no {SAFE_WEIGHTS}. Its weights, if any, are a '
                   f'pickled {PICKLED_WEIGHTS}, read only when asked: allow_pickle=True '
                   '(--allow-pickle) reads it with torch.load(weights_only=True).')
  path = _download(repo, PICKLED_WEIGHTS, revision, missing_ok=True)
  if not path:
    raise HubError(f'{repo}@{revision} has neither {SAFE_WEIGHTS} nor {PICKLED_WEIGHTS}.')
  import torch
  return torch.load(path, map_location='cpu', weights_only=True)


def _download(repo: str, filename: str, revision: str, *, missing_ok: bool = False):
  """The cached path of ``filename``, downloaded if need be; None for a file the repo
  lacks if ``missing_ok``. huggingface_hub's errors become ``HubError`` lines."""
  import huggingface_hub
  from huggingface_hub import errors as hub_errors
  where = f'{repo}@{revision}'
  try:
    return huggingface_hub.hf_hub_download(repo, filename, revision=revision,
                                           library_name='tinyvit_jax')
  except hub_errors.GatedRepoError:
    raise HubError(f'{where} is gated: accept its terms at https://huggingface.co/{repo} and '
                   'log in (`hf auth login`) or set HF_TOKEN.') from None
  except hub_errors.RepositoryNotFoundError:
    raise HubError(f'{repo}: no such model repo on the Hub, or a private one and no token '
                   'that may read it (`hf auth login` or HF_TOKEN).') from None
  except hub_errors.RevisionNotFoundError:
    raise HubError(f'{repo} has no revision {revision!r}.') from None
  except hub_errors.RemoteEntryNotFoundError:
    if missing_ok:
      return None
    raise HubError(f'{where} has no {filename}: not a model repo in timm\'s layout.') from None
  except hub_errors.LocalEntryNotFoundError:
    cached = huggingface_hub.try_to_load_from_cache(repo, filename, revision=revision)
    if missing_ok and cached is huggingface_hub._CACHED_NO_EXIST:
      return None  # the cache recorded that the repo lacks it
    reason = ('HF_HUB_OFFLINE=1 forbids downloading it'
              if huggingface_hub.is_offline_mode() else 'the Hub could not be reached')
    raise HubError(f'{where}: {filename} is not in the Hub cache '
                   f'({huggingface_hub.constants.HF_HUB_CACHE}) and {reason}; download it '
                   f'where there is network (`hf download {repo} --revision {revision}`) into '
                   'the same HF_HUB_CACHE.') from None
  except hub_errors.HFValidationError as error:
    raise HubError(f'{repo!r}: not a Hub repo id ({str(error).splitlines()[0]}).') from None
  except hub_errors.HfHubHTTPError as error:
    raise HubError(f'{where}: the Hub answered {str(error).splitlines()[0]}.') from None


def write_folder(model: nnx.Module, name: str, kwargs: dict, directory: str, *,
                 metadata: dict | None = None, card: str = '') -> None:
  """Writes ``model`` (``create_model(name, **kwargs)``) as a Hub repo folder timm reads:
  ``model.safetensors`` in timm's keys, ``config.json`` with the preprocessing and class
  names of ``metadata`` (a ``model.json``'s; the registry's without one) and ``card`` as
  ``README.md``. Assembled under a temporary name, so a killed write leaves no folder."""
  metadata = metadata or {}
  info = registry.model_info(name)
  preprocess = metadata.get('preprocess') or {}
  size = int(preprocess.get('image_size', kwargs.get('img_size', info.input_size)))
  model_args = {k: v for k, v in kwargs.items() if k != 'num_classes'}
  pretrained_cfg = dict(input_size=[3, size,
                                    size], interpolation=preprocess.get('interpolation', 'bicubic'),
                        crop_pct=float(preprocess.get('crop_pct', info.crop_pct)),
                        crop_mode='center', mean=list(preprocess.get('mean', info.mean)),
                        std=list(preprocess.get('std', info.std)), num_classes=model.num_classes,
                        fixed_input_size=False)
  config = dict(architecture=name, num_classes=model.num_classes,
                num_features=int(getattr(model, 'num_features', 0)) or None,
                pretrained_cfg=pretrained_cfg)
  if model_args:
    config['model_args'] = model_args
  labels = metadata.get('labels')
  if labels and len(labels) == model.num_classes:
    config['label_names'] = list(labels)
  directory = os.path.abspath(directory)
  if os.path.exists(directory):
    raise FolderExists(f'{directory} exists; choose another folder or remove it.')
  os.makedirs(os.path.dirname(directory), exist_ok=True)
  with writes.replacing(directory) as tmp:
    os.mkdir(tmp)
    timm_weights.write_timm_safetensors(model, os.path.join(tmp, SAFE_WEIGHTS))
    with open(os.path.join(tmp, CONFIG), 'w') as f:
      json.dump(config, f, indent=2)
    with open(os.path.join(tmp, 'README.md'), 'w') as f:
      f.write(card or f'---\nlibrary_name: timm\ntags: [image-classification, timm]\n---\n'
              f'# {name}\n')


def push_folder(directory: str, repo: str) -> str:
  """Uploads a folder ``write_folder`` wrote to the Hub model repo ``repo`` (created if
  need be, with the token huggingface_hub finds); returns the commit's URL."""
  from huggingface_hub import HfApi
  api = HfApi(library_name='tinyvit_jax')
  api.create_repo(repo, exist_ok=True)
  return str(
      api.upload_folder(repo_id=repo, folder_path=directory,
                        commit_message='Upload a tinyvit_jax export'))
