"""Shows what the model sees, for eyeballing an augmentation config.

  python -m tinyvit_jax.preview --config=FILE.py[:arg] --epoch E --count N \
      --out grid.png [--npy FILE] [--run NAME]

Takes positions 0..N-1 of epoch E (N even while Mixup/CutMix is on), augments and mixes
them exactly as training does (``pipeline.make_input_pipeline``), and writes them as a
grid, denormalised to pixels, each tile captioned with its example (dataset) index.
``--npy`` also saves the exact tensors: ``np.savez`` with ``images`` (N, H, W, 3) float32
as the model gets them, ``indices`` and ``targets`` (N, classes), the mixed targets. The
config file's ``get_config(arg)`` returns ``data`` and ``aug`` (see
``configs/preview_digits.py``), or is a training recipe, whose training data is shown; of
a recipe of several runs (``configs/quickstart.py``) ``--run NAME`` picks the one.
``--config.aug.KEY=VALUE`` overrides a setting (``--config.runs.NAME.aug.KEY=VALUE``).
"""
import math
import sys

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np
from PIL import Image
from PIL import ImageDraw

from tinyvit_jax import errors
from tinyvit_jax.data import augment
from tinyvit_jax.data import order
from tinyvit_jax.data import pipeline
from tinyvit_jax.data import sources
from tinyvit_jax.train import config as config_lib

# Flags of their own: tinyvit_jax.main defines a --config too, and a process (a notebook,
# a test worker) may import both.
_FLAGS = flags.FlagValues()
_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file with data and aug.',
                                          lock_config=True, flag_values=_FLAGS)
_EPOCH = flags.DEFINE_integer('epoch', 0, 'Epoch to show.', flag_values=_FLAGS)
_COUNT = flags.DEFINE_integer('count', 16, 'Examples to show: positions 0..count-1.',
                              flag_values=_FLAGS)
_OUT = flags.DEFINE_string('out', 'preview.png', 'Grid PNG to write.', flag_values=_FLAGS)
_NPY = flags.DEFINE_string('npy', None, 'Also save the float tensors to this .npz file.',
                           flag_values=_FLAGS)
_RUN = flags.DEFINE_string('run', None, 'The run to show, of a recipe of several (runs).',
                           flag_values=_FLAGS)

CAPTION_HEIGHT = 12  # pixels under each tile for its index, in PIL's default font


def pick_run(config, run: str | None) -> ml_collections.ConfigDict:
  """The preview config to show (``data`` and ``aug``, as ``configs/preview_digits.py``):
  ``config`` itself, or a training recipe's run ``run`` (its training data)."""
  if 'data' in config and 'args' in config.data:
    runs = {'': config}
  else:
    runs = {name: _preview_of(c) for name, c in config_lib.runs(config).items()}
  if '' in runs:
    if run:
      raise config_lib.ConfigError(f'one run, not several; drop --run={run}.')
    return runs['']
  if run not in runs:
    raise config_lib.ConfigError(f'several runs ({", ".join(runs)}); ' + (
        f'--run={run} is none of them.' if run else 'pick one with --run=NAME.'))
  return runs[run]


def _preview_of(run) -> ml_collections.ConfigDict:
  """A training run's training data and augmentation, in the preview schema."""
  data = dict(source=run.data.source, args=run.data.train.to_dict(), seed=run.seed,
              label_smoothing=run.label_smoothing, num_repeats=run.data.num_repeats,
              repeat_stride=run.data.repeat_stride)
  return ml_collections.ConfigDict(dict(data=data, aug=run.aug.to_dict()))


def augmented_examples(config, epoch: int, count: int):
  """(images float32, dataset indices, targets, repeats) of positions 0..count-1 of
  ``epoch``."""
  data = config.data
  source = sources.make_source(data.source, **data.args)
  repeats = order.Repeats(data.get('num_repeats', 1), data.get('repeat_stride', 64))
  run = pipeline.make_input_pipeline(
      source, config.aug, seed=data.seed, global_batch=count,
      mesh=pipeline.data_mesh(jax.devices()[:1]), label_smoothing=data.label_smoothing,
      start_step=epoch * order.steps_per_epoch(len(source), count, repeats), num_steps=1,
      repeats=repeats)
  batch = next(run.batches)
  images, targets = run.device_augment(batch)
  return (np.asarray(images), np.asarray(batch['index']), np.asarray(targets),
          np.asarray(batch['repeat']))


def to_pixels(images: np.ndarray, aug_config) -> np.ndarray:
  """Normalised float images back to uint8 (erasing noise is clipped)."""
  settings = dict(augment.TRAIN_DEFAULTS, **aug_config)
  pixels = (images * np.asarray(settings['std']) + np.asarray(settings['mean'])) * 255
  return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def grid(pixels: np.ndarray, captions) -> Image.Image:
  """Tiles in rows of ceil(sqrt(N)), each with its caption in a strip below."""
  count, height, width, _ = pixels.shape
  columns = math.ceil(math.sqrt(count))
  rows = math.ceil(count / columns)
  cell = height + CAPTION_HEIGHT
  canvas = Image.new('RGB', (columns * width, rows * cell))
  draw = ImageDraw.Draw(canvas)
  for k, (tile, caption) in enumerate(zip(pixels, captions)):
    left, top = (k % columns) * width, (k // columns) * cell
    canvas.paste(Image.fromarray(tile), (left, top))
    draw.text((left + 1, top + height), str(caption), fill=(255, 255, 255))
  return canvas


def main(argv):
  del argv
  recipe = config_flags.get_config_filename(_FLAGS['config'])
  try:
    config = pick_run(_CONFIG.value, _RUN.value)
    images, indices, targets, repeats = augmented_examples(config, _EPOCH.value, _COUNT.value)
  except errors.UserError as error:
    sys.exit(errors.refuse(f'{recipe}: {error}'))
  captions = [f'{i}' if not r else f'{i} r{r}' for i, r in zip(indices, repeats)]
  grid(to_pixels(images, config.aug), captions).save(_OUT.value)
  if _NPY.value:
    np.savez(_NPY.value, images=images, indices=indices, targets=targets, repeats=repeats)
  print(f'Wrote {len(indices)} examples of epoch {_EPOCH.value} to {_OUT.value}'
        + (f' and {_NPY.value}' if _NPY.value else ''))


def _parse(argv):
  """This module's flags; absl's own (logging, --help) keep their defaults."""
  flags.FLAGS(argv[:1])
  try:
    return _FLAGS(argv)
  except flags.Error as error:
    sys.exit(f'error: {error}')


if __name__ == '__main__':
  flags.mark_flag_as_required('config', flag_values=_FLAGS)
  app.run(main, flags_parser=_parse)
