"""The config schema: every key a recipe may set, with its default, and the checks.

Recipes in ``configs/`` start from ``base_config()`` and change what they need, so a key
a recipe does not know about still has a documented default, and a misspelt override
(``--config.optim.lrr=1``) is an error that names the nearest valid keys.
"""
import difflib
import importlib.util
import os
import re

import ml_collections

from tinyvit_jax import errors
from tinyvit_jax import target
from tinyvit_jax.data import augment
from tinyvit_jax.data import order
from tinyvit_jax.distill.teachers import jax_teacher

STAGES = ('save_logits', 'train', 'eval', 'export')
DISTILL_KINDS = ('none', 'fpd', 'soft', 'hard')
DTYPES = target.DTYPES
# The key that says where a data source's files are (data/sources); the other sources
# (digits, synthetic) need none.
DATA_PATH_KEYS = {'tfds': 'data_dir', 'array_record': 'directory', 'folder': 'root'}
# Under a --data_dir, the folder of each split of a source that holds one split per folder.
SPLIT_FOLDERS = {'train': 'train', 'eval': 'val'}
# Keys that change nothing a stage returns: a finished stage made with other values of them
# is neither redone nor refused (train/stage_records.py). Cadences (logs, evals, checkpoints
# and how many are kept), the eval batch, loader workers, what is written on the side,
# where a teacher runs and how its weights are laid out, the store's check after the save
# pass, the summary's name. Progress bars are not config (TQDM_DISABLE). A data path
# (DATA_PATH_KEYS) counts only when the data it names has another fingerprint.
NO_RESULT_KEYS = ('log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
                  'eval_every_epochs', 'eval_batch_size', 'data.num_workers', 'record_examples',
                  'stages', 'model.display_name', 'distill.teacher_device',
                  'distill.teacher_sharding', 'distill.verify_rows', 'distill.verify_min_top1',
                  'distill.verify_max_mean_abs_diff')
# The keys (or sections) a stage does not read, beyond NO_RESULT_KEYS: a logit store does
# not depend on the student that learns from it, nor trained weights on how eval looks at
# them. Each stage reads what the stages before it read, so a changed input of train
# changes eval's and export's inputs too.
NOT_READ_BY = {
    'save_logits': ('model', 'init', 'optim', 'dtype', 'label_smoothing', 'eval_aug',
                    'distill.alpha', 'distill.tau', 'distill.eval_teacher'),
    'train': ('eval_aug', 'distill.eval_teacher'),
    'eval': (),
    'export': ('distill.eval_teacher',),
}


class ConfigError(errors.UserError, ValueError):
  """A config the run cannot start with; ``main`` prints it as one line, no traceback."""


def compute_dtype(config) -> str:
  """``config.dtype`` with 'auto' resolved by the platform compiled for
  (``target.compute_dtype``, the rule teachers follow too)."""
  return target.compute_dtype(config.dtype)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(name='tiny_vit_5m_224'))
  c.model.kwargs = ml_collections.ConfigDict()  # create_model overrides: img_size, ...
  c.model.display_name = ''  # the summary's name for a model its kwargs change; '': name
  c.num_classes = 1000
  c.dtype = 'float32'  # compute dtype, params stay float32: or 'bfloat16', or 'auto'

  c.data = ml_collections.ConfigDict()
  c.data.source = 'tfds'  # a name of data.sources.make_source
  c.data.name = ''  # the dataset's name in a logit store; default: the source's name
  c.data.train = ml_collections.ConfigDict(dict(name='imagenet2012', split='train', data_dir=''))
  c.data.eval = ml_collections.ConfigDict(dict(name='imagenet2012', split='validation',
                                               data_dir=''))
  c.data.num_workers = 8
  # Repeated augmentation (DeiT's RASampler; data/order.py): views of each example per
  # epoch, and the positions between them (>= the per-device batch keeps them apart).
  c.data.num_repeats = 1
  c.data.repeat_stride = 64
  c.aug = ml_collections.ConfigDict(augment.TRAIN_DEFAULTS)
  c.eval_aug = ml_collections.ConfigDict(augment.EVAL_DEFAULTS)
  c.label_smoothing = 0.1

  c.batch_size = 1024  # global, over all devices and hosts
  c.eval_batch_size = 1024
  c.epochs = 300

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-3
  c.optim.min_lr = 1e-5
  c.optim.warmup_lr = 1e-6
  c.optim.warmup_epochs = 5
  c.optim.weight_decay = 0.05
  c.optim.clip_grad_norm = 5.0  # 0: off
  c.optim.layer_decay = 1.0  # 1: off
  c.optim.grad_accum_steps = 1
  c.optim.ema_decay = 0.0  # 0: no EMA
  c.optim.freeze_bn = False

  c.distill = ml_collections.ConfigDict()
  c.distill.kind = 'none'  # 'fpd': soft CE on the teacher, no labels; 'soft'/'hard': DeiT
  c.distill.from_store = False  # teacher rows from a logit store (else the teacher online)
  c.distill.teacher = ''  # 'ours': a checkpoint dir or hf-hub:ORG/NAME; 'timm'/'torch': a file
  c.distill.teacher_adapter = 'ours'  # or 'timm', 'torch' (distill/teachers/factory.py)
  c.distill.teacher_model = ''  # timm name, or 'package.module:factory' for 'torch'
  c.distill.teacher_kwargs = ml_collections.ConfigDict()
  c.distill.teacher_num_classes = 0  # 0: the checkpoint's head size
  c.distill.teacher_mean = ()  # 'torch': the module's input normalisation
  c.distill.teacher_std = ()
  c.distill.teacher_device = 'cpu'
  # 'ours' only: compute dtype ('auto': bfloat16 on GPU/TPU), and weights 'replicated',
  # 'sharded' over the devices, or 'auto': sharded if too big for one
  # (distill/teachers/jax_teacher.py).
  c.distill.teacher_dtype = 'float32'
  c.distill.teacher_sharding = 'auto'
  c.distill.teacher_class_index = ''  # teacher class of each student class, one per line
  c.distill.store = ''  # logit store dir; default WORKDIR/logits
  c.distill.views_per_example = 0  # M > 0: a store of M epochs, replayed (data/order.py)
  c.distill.k = 10
  c.distill.alpha = 0.5
  c.distill.tau = 1.0
  c.distill.eval_teacher = True  # eval reports agreement and KL with a named teacher
  c.distill.verify_rows = 0  # re-run the teacher on this many stored rows after saving
  c.distill.verify_min_top1 = 0.99  # ... and fail below this top-1 agreement
  c.distill.verify_max_mean_abs_diff = 1e-3  # ... or above this mean |p_stored - p|

  c.init = ml_collections.ConfigDict()
  c.init.checkpoint = ''  # start from these weights (our checkpoint dir, or hf-hub:ORG/NAME)
  c.init.head = 'keep'  # 'keep', 'reinit', or a class-index file mapping the head's rows

  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 2
  c.eval_every_epochs = 1
  c.log_every_steps = 50
  c.record_examples = False  # write each step's example indices to examples.jsonl
  c.stages = STAGES
  return c


def load_recipe(path: str):
  """The recipe module at ``path`` (e.g. ``configs/quickstart.py``), for its
  ``get_config`` and helpers; a FileNotFoundError names a wrong path."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no recipe file {path!r}; see configs/.')
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def runs(config) -> dict:
  """A recipe's runs, in order: name -> run config; ``{'': config}`` for a one-run recipe.

  Each run is a ``base_config()`` with changes; a config without its sections (such as
  ``configs/preview_digits.py``, which is for ``tinyvit_jax.preview``) is refused.
  """
  found = ({
      name: config.runs[name] for name in config.run_order
  } if 'runs' in config else {
      '': config
  })
  for name, run in found.items():
    missing = [key for key in base_config() if key not in run]
    if missing:
      raise ConfigError(f'{f"runs.{name}" if name else "the config"} is not a training run: '
                        f'it lacks {", ".join(missing[:4])}; a recipe for tinyvit_jax.main '
                        'starts from train/config.py\'s base_config().')
  return found


def fill_data_dir(config, data_dir: str) -> list[str]:
  """Points a run's data paths that are still empty at ``data_dir`` (main's ``--data_dir``)
  and returns every data path key the run has, set or not.

  A tfds data_dir holds every split, so train and eval both read it; an ArrayRecord or
  image folder holds one split, so they read ``data_dir/train`` and ``data_dir/val``.
  """
  key = DATA_PATH_KEYS.get(config.data.source)
  if key is None:
    return []
  with config.unlocked():
    for split, folder in SPLIT_FOLDERS.items():
      if not config.data[split].get(key):
        config.data[split][key] = (data_dir if config.data.source == 'tfds' else os.path.join(
            data_dir, folder))
  return data_path_keys(config)


def parse_arg(arg: str, **defaults) -> dict:
  """A recipe argument ``'variant=5m,runlocal'`` -> ``{'variant': '5m', 'runlocal': True}``,
  over ``defaults``; a name without ``=`` is a flag. Unknown names are an error."""
  parsed = dict(defaults, runlocal=False)
  for item in filter(None, (arg or '').split(',')):
    name, has_value, value = item.partition('=')
    if name not in parsed:
      raise ValueError(f'Unknown recipe argument {name!r}; this recipe takes '
                       f'{sorted(parsed)}.')
    parsed[name] = value if has_value else True
  return parsed


def shrink_for_runlocal(config, *, image_size: int = 64, num_examples: int = 256):
  """``:runlocal``: the same recipe on ``num_examples`` synthetic images (a quarter as many
  held out) at ``image_size``, 1 epoch, on a CPU in a minute or two: a check that it runs,
  not of what it learns."""
  synthetic = dict(num_examples=num_examples, num_classes=config.num_classes, image_size=image_size)
  config.data.source = 'synthetic'
  config.data.train = ml_collections.ConfigDict(dict(synthetic, seed=0))
  config.data.eval = ml_collections.ConfigDict(
      dict(synthetic, num_examples=num_examples // 4, seed=1))
  config.data.num_workers = 0
  config.aug.update(image_size=image_size, augment_on='host')
  config.eval_aug.image_size = image_size
  config.model.kwargs.img_size = image_size
  if config.model.name.startswith('tiny_vit'):  # windows that tile the small feature maps
    config.model.kwargs.window_sizes = tuple(max(1, image_size // d) for d in (8, 8, 16, 32))
  config.batch_size = config.eval_batch_size = 32
  config.epochs = 1
  config.optim.warmup_epochs = 0
  config.checkpoint_every_steps = config.log_every_steps = 4
  return config


def check_config(config) -> None:
  """Raises ``ValueError`` naming the key, the value and the fix for impossible values."""
  problems = []
  distill = config.distill
  if distill.kind not in DISTILL_KINDS:
    problems.append(f'distill.kind={distill.kind!r}; expected one of {DISTILL_KINDS}.')
  elif distill.kind != 'none':
    problems += _distill_problems(config)
  for key in ('batch_size', 'eval_batch_size', 'epochs', 'optim.grad_accum_steps',
              'checkpoint_every_steps', 'log_every_steps', 'eval_every_epochs', 'keep_checkpoints',
              'num_classes'):
    value = _get(config, key)
    if not isinstance(value, int) or value < 1:
      problems.append(f'{key}={value!r} must be a positive integer.')
  if config.optim.lr <= 0:
    problems.append(f'optim.lr={config.optim.lr} must be positive.')
  if not 0 <= config.optim.ema_decay < 1:
    problems.append(f'optim.ema_decay={config.optim.ema_decay} must be in [0, 1).')
  try:
    order.check_repeats(order.repeats_of(config.data))
  except ValueError as error:
    problems.append(f'data.{error}')
  for key, make in (('aug', augment.make_train_augment), ('eval_aug', augment.make_eval_augment)):
    try:
      make(config[key])
    except ValueError as error:
      problems.append(f'{key}: {error}')
  for key in _flat_keys(config):
    if distill.kind == 'none' and key.startswith('distill.'):
      continue
    try:
      check_local_path(_get(config, key), key)
    except ValueError as error:
      problems.append(str(error))
  if config.dtype not in DTYPES:
    problems.append(f'dtype={config.dtype!r}; expected one of {DTYPES}.')
  key = DATA_PATH_KEYS.get(config.data.source)
  for split in SPLIT_FOLDERS if key else ():
    if not config.data[split].get(key):
      problems.append(f'data.{split}.{key} is empty, and data.source={config.data.source!r} '
                      f'reads it: give --data_dir=DIR or --config.data.{split}.{key}=PATH.')
  unknown = [s for s in config.stages if s not in STAGES]
  if unknown:
    problems.append(f'stages={tuple(config.stages)} has unknown {unknown}; known: {STAGES}.')
  if problems:
    raise ConfigError('Impossible config: ' + ' '.join(problems))


def stage_inputs(config, stage: str) -> dict:
  """Every key ``stage`` reads -> its value: the config less ``NO_RESULT_KEYS`` and
  ``NOT_READ_BY[stage]``; data paths included (their data's fingerprint decides)."""
  skipped = NO_RESULT_KEYS + NOT_READ_BY[stage]
  return {
      key: value
      for key, value in _flat_items(config)
      if not any(key == s or key.startswith(s + '.') for s in skipped)
  }


def data_path_keys(config) -> list[str]:
  """The keys that say where the run's data files are; none for digits or synthetic."""
  key = DATA_PATH_KEYS.get(config.data.source)
  return [f'data.{split}.{key}' for split in SPLIT_FOLDERS] if key else []


def _distill_problems(config) -> list[str]:
  """The checks of ``distill.*``, for a run that distils: without distillation none of
  those fields is read, so a default such as ``k=10`` never refuses a 4-class run."""
  problems = []
  distill = config.distill
  if distill.from_store and not (distill.teacher or distill.store):
    problems.append(f'distill.kind={distill.kind!r} needs distill.teacher (a checkpoint '
                    'to save its store with) or distill.store (a complete logit store).')
  if not distill.from_store:
    if not distill.teacher:
      problems.append(f'distill.kind={distill.kind!r} needs distill.teacher (a checkpoint '
                      'dir) to run online, or distill.from_store=True and a store.')
    elif online_problem := jax_teacher.check_online(distill):
      problems.append(online_problem)
  views = distill.views_per_example
  if views != int(views) or views < 0:
    problems.append(f'distill.views_per_example={views} must be a whole number >= 0.')
  elif views and not distill.from_store:
    problems.append(f'distill.views_per_example={views} bounds a logit store: it needs '
                    'distill.from_store=True.')
  elif views > config.epochs:
    problems.append(f'distill.views_per_example={views} exceeds epochs={config.epochs}: the '
                    'store would hold views no epoch reads. Use at most epochs, or 0 (one '
                    'view per epoch).')
  if distill.from_store and not 1 <= distill.k <= config.num_classes:  # the store's top-k
    problems.append(f'distill.k={distill.k} must be between 1 and num_classes='
                    f'{config.num_classes}.')
  for key, value, allowed in (('distill.teacher_dtype', distill.teacher_dtype, DTYPES),
                              ('distill.teacher_sharding', distill.teacher_sharding,
                               jax_teacher.SHARDINGS)):
    if value not in allowed:
      problems.append(f'{key}={value!r}; expected one of {allowed}.')
  return problems


def check_local_path(value, name: str) -> None:
  """Refuses a URL (``gs://...``) where a path is read or written.

  Workdirs, logit stores, checkpoints and ArrayRecord data go through local file APIs
  (atomic renames, fsync, grain's readers), so a bucket is used through a mount that
  every host sees. Without this check, ``os.makedirs('gs://b/x')`` would quietly make a
  local folder named ``gs:`` on each host.
  """
  if isinstance(value, str) and re.match(r'^[A-Za-z][A-Za-z0-9+.-]*://', value):
    bucket = value.split('://', 1)[1].split('/', 1)[0]
    raise ConfigError(
        f'{name}={value!r}: paths go through local file APIs, so mount the bucket on '
        f'every host (gcsfuse --implicit-dirs {bucket} /mnt/gcs/{bucket}) and give '
        f'/mnt/gcs/{value.split("://", 1)[1]}; launch/tpu_vm.sh mounts gs:// paths itself.')


def check_override_keys(config, keys) -> None:
  """Refuses ``--config.a.b=...`` overrides of keys the config lacks, with near names. In
  a recipe of several runs every key is ``runs.NAME.key``, so a key is also matched
  within a run: ``optim.lrr`` suggests each run's ``optim.lr``."""
  known = sorted(_flat_keys(config))
  within_run = {}
  for full in known:
    within_run.setdefault(re.sub(r'^runs\.[^.]+\.', '', full), []).append(full)
  for key in keys:
    if key not in known and not any(k.startswith(key + '.') for k in known):
      close = difflib.get_close_matches(key, known, n=3, cutoff=0.6) or [
          full for near in difflib.get_close_matches(key, within_run, n=1, cutoff=0.6)
          for full in within_run[near]
      ]
      hint = f' Did you mean {", ".join(close)}?' if close else ''
      raise ConfigError(f'Unknown config key {key!r}.{hint} Every key, with its '
                        'default, is in tinyvit_jax/train/config.py.')


def _flat_keys(config, prefix=''):
  for key, value in config.items():
    name = prefix + key
    if isinstance(value, ml_collections.ConfigDict):
      yield from _flat_keys(value, name + '.')
    yield name


def _flat_items(config, prefix=''):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _flat_items(value, prefix + key + '.')
    else:
      yield prefix + key, value


def _get(config, dotted: str):
  for part in dotted.split('.'):
    config = config[part]
  return config
