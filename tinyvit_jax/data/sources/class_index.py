"""Class-index files: how one label space maps into another (e.g. ImageNet-1k in 21k).

One integer a line; line ``c`` is the source class that target class ``c`` is. Fine-tuning
gathers a pretrained head's rows through it (``train/pretrained.py``); an FPD teacher's
probabilities are read through it (``distill/teachers/``). One reader serves both.
"""
import os

import numpy as np

from tinyvit_jax import errors


class ClassIndexError(errors.UserError, ValueError):
  """A class-index file that is not the mapping its run needs; ``main`` prints it as one
  line."""


class MissingClassIndex(ClassIndexError, FileNotFoundError):
  """No class-index file where the config names one."""


def read_class_index(path: str, num_classes: int | None, source_classes: int, *,
                     target: str = 'student', source: str = 'teacher',
                     unique: bool = True) -> np.ndarray:
  """The file's ``num_classes`` integers (any count if None) in ``[0, source_classes)``.

  ``target`` and ``source`` name the two sides in errors. ``unique``: refuse a source
  class on two lines (a teacher probability must not count twice; a pretrained head row
  may well start two classes).
  """
  if not os.path.isfile(path):
    raise MissingClassIndex(f'Class-index file {os.path.abspath(path)!r} does not exist.')
  with open(path) as f:
    lines = [line.strip() for line in f if line.strip()]
  try:
    mapping = np.asarray([int(line) for line in lines], np.int64)
  except ValueError as error:
    raise ClassIndexError(
        f'{path}: every line must be one integer class index ({error}).') from None
  if num_classes is not None and len(mapping) != num_classes:
    raise ClassIndexError(f'{path} has {len(mapping)} lines; the {target} has {num_classes} '
                          'classes, one line each.')
  bad = np.flatnonzero((mapping < 0) | (mapping >= source_classes))
  if len(bad):
    raise ClassIndexError(f'{path}: line {bad[0] + 1} holds {mapping[bad[0]]}, outside the '
                          f'{source}\'s {source_classes} classes.')
  values, counts = np.unique(mapping, return_counts=True)
  if unique and (counts > 1).any():
    twice = values[counts > 1][0]
    raise ClassIndexError(f'{path}: {source} class {twice} is on lines '
                          f'{(np.flatnonzero(mapping == twice) + 1).tolist()}; a {source} '
                          f'class can stand for one {target} class only (its probability '
                          'would count twice).')
  return mapping
