"""The preview CLI shows, and dumps, exactly what the training pipeline gives."""
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from tinyvit_jax import preview
from tinyvit_jax.data import order
from tinyvit_jax.data import pipeline
from tinyvit_jax.data import sources
from tinyvit_jax.train import config as config_lib

CONFIG = os.path.join(os.path.dirname(__file__), '..', 'configs', 'preview_digits.py')


def test_grid_has_a_captioned_tile_per_example():
  tiles = np.full((5, 32, 32, 3), 100, np.uint8)
  image = preview.grid(tiles, [7, 1436, 2, 3, 4])
  assert image.size == (3 * 32, 2 * (32 + preview.CAPTION_HEIGHT))
  pixels = np.asarray(image)
  assert (pixels[:32, :32] == 100).all()
  assert pixels[32:32 + preview.CAPTION_HEIGHT, :32].max() > 200  # the caption's text
  assert (pixels[44:, 64:] == 0).all()  # the sixth cell is empty


@pytest.mark.slow
def test_cli_writes_the_grid_and_the_pipelines_tensors(tmp_path):
  out, npy = tmp_path / 'grid.png', tmp_path / 'grid.npz'
  subprocess.run([
      sys.executable, '-m', 'tinyvit_jax.preview', f'--config={CONFIG}', '--config.data.seed=3',
      '--epoch=1', '--count=8', f'--out={out}', f'--npy={npy}'
  ], check=True, capture_output=True)
  with Image.open(out) as image:
    assert image.size == (3 * 32, 3 * (32 + preview.CAPTION_HEIGHT))
  dumped = np.load(npy)
  assert dumped['images'].shape == (8, 32, 32, 3) and dumped['targets'].shape == (8, 10)

  # The same examples from a training pipeline at global batch 8: the same bits (and the
  # same program, so this process loads the one the CLI compiled).
  config = config_lib.load_recipe(CONFIG).get_config()
  source = sources.make_source(config.data.source, **config.data.args)
  run = pipeline.make_input_pipeline(source, config.aug, seed=3, global_batch=8,
                                     label_smoothing=config.data.label_smoothing,
                                     start_step=order.steps_per_epoch(len(source), 8), num_steps=1)
  batch = next(run.batches)
  images, targets = run.device_augment(batch)
  np.testing.assert_array_equal(dumped['indices'], np.asarray(batch['index']))
  np.testing.assert_array_equal(dumped['images'], np.asarray(images))
  np.testing.assert_array_equal(dumped['targets'], np.asarray(targets))


def test_repeated_views_are_shown_and_captioned_by_repeat():
  """``--config.data.num_repeats=3 --config.data.repeat_stride=4``: 12 positions hold 4
  examples three times, the views differing."""
  config = config_lib.load_recipe(CONFIG).get_config()
  config.data.update(num_repeats=3, repeat_stride=4)
  images, indices, _, repeats = preview.augmented_examples(config, epoch=0, count=12)
  assert repeats.tolist() == [0] * 4 + [1] * 4 + [2] * 4
  assert np.array_equal(indices[:4], indices[4:8]) and np.array_equal(indices[:4], indices[8:])
  assert all(np.abs(images[k] - images[k + 4]).mean() > 0.05 for k in range(4))


def test_unknown_source_is_named():
  with pytest.raises(ValueError, match=r"Unknown data source 'mnist'; known: \['array_record'"):
    sources.make_source('mnist')
