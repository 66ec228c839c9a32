"""Top-5 labels of images from an exported checkpoint.

  python -m tinyvit_jax.predict --checkpoint WORKDIR/export IMAGE [IMAGE ...]

The export's ``model.json`` holds the class names and the eval preprocessing of the run
that wrote it (a converted timm checkpoint has neither: its model's registered input
size and normalisation are used, and classes print as numbers).
"""
import argparse
import sys

import jax
import numpy as np
from flax import nnx
from PIL import Image

from tinyvit_jax import compile_cache
from tinyvit_jax import errors
from tinyvit_jax import model_checkpoint
from tinyvit_jax.data import augment
from tinyvit_jax.data.sources import decode


def load(directory: str):
  """(model in eval mode, eval Augment, class names) of a checkpoint directory."""
  meta = model_checkpoint.read_model_json(directory)
  model = model_checkpoint.restore_model(directory)
  model.eval()
  labels = meta.get('metadata', {}).get('labels') or [str(c) for c in range(model.num_classes)]
  return model, augment.make_eval_augment(model_checkpoint.preprocess(meta)), labels


def predict(directory: str, paths: list[str], top: int = 5) -> list[list[tuple[str, float]]]:
  """For each image, its ``top`` (label, probability) pairs, most likely first."""
  model, eval_augment, labels = load(directory)
  images = []
  for path in paths:
    try:
      with Image.open(path) as image:
        rgb = np.asarray(image.convert('RGB'))
    except (OSError, ValueError) as error:
      raise decode.UndecodableImage(f'{path}: not a readable image ({error}).') from None
    images.append(eval_augment.host(dict(image=rgb), None)['image'])
  forward = nnx.jit(lambda model, x: jax.nn.softmax(model(eval_augment.device(x))))
  probabilities = np.asarray(forward(model, np.stack(images)))  # one compile, not one per op
  best = np.argsort(-probabilities, axis=-1)[:, :top]
  return [[(labels[c], float(p[c])) for c in row] for p, row in zip(probabilities, best)]


def run(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--checkpoint', required=True, help='an export directory')
  parser.add_argument('images', nargs='+')
  args = parser.parse_args(argv)
  compile_cache.enable()
  try:
    results = predict(args.checkpoint, args.images)
  except errors.UserError as error:
    return errors.refuse(error)
  for path, pairs in zip(args.images, results):
    print(path)
    for label, probability in pairs:
      print(f'  {probability:7.2%}  {label}')
  return 0


if __name__ == '__main__':
  sys.exit(run())
