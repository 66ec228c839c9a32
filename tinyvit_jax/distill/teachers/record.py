"""What a teacher is to the save pass, whichever framework runs it, and what every kind
shares: the student's normalisation mapped to the teacher's, and its classes mapped to the
student's.

``probabilities(images) -> (B, C) float32``: the softmax of the teacher's logits on
augmented float32 NHWC images, normalised with the student's mean and std as the device
augmentation gives them (a jax array, possibly sharded over several devices). A teacher
trained with other statistics (CLIP's) re-normalises them first, as one per-channel
affine map (``renormalise``). ``checkpoint_hash`` names the weights in the store's
manifest, so a resumed save pass refuses to mix two teachers' rows.
"""
import hashlib
import os
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tinyvit_jax import errors
from tinyvit_jax import normalisation
from tinyvit_jax.data.sources import class_index as class_index_lib


class TeacherMismatch(errors.UserError, ValueError):
  """A teacher whose classes are not the student's; ``main`` prints it as one line."""


class Teacher(NamedTuple):
  name: str
  checkpoint_hash: str
  num_classes: int
  probabilities: Callable


def student_normalisation(aug) -> tuple[tuple, tuple]:
  """The mean and std the student's views are normalised with (``aug``'s, or ImageNet's)."""
  aug = aug or {}
  return (tuple(aug.get('mean', normalisation.IMAGENET_MEAN)),
          tuple(aug.get('std', normalisation.IMAGENET_STD)))


def renormalise(input_mean, input_std, mean, std) -> Callable:
  """Views normalised with ``input_mean/std`` -> normalised with ``mean/std``, as one
  per-channel affine map ``x * input_std / std + (input_mean - mean) / std``; the
  identity when the two agree."""
  scale = np.asarray(input_std, np.float32) / np.asarray(std, np.float32)
  shift = ((np.asarray(input_mean, np.float32) - np.asarray(mean, np.float32))
           / np.asarray(std, np.float32))
  if np.allclose(scale, 1, rtol=0, atol=1e-7) and np.allclose(shift, 0, rtol=0, atol=1e-7):
    return lambda images: images
  return lambda images: images * scale + shift


def map_classes(teacher: Teacher, class_index: str, num_classes: int | None = None) -> Teacher:
  """``teacher`` read through a class-index file: line c holds the teacher class of
  student class c (e.g. a 21k teacher, a 1k student).

  The returned row is the teacher's probabilities gathered at those classes, *not*
  renormalised: it has the student's C classes and sums to 1 minus the mass of the
  unmapped teacher classes. That mass joins the tail: the store keeps the row's top-k,
  and the dense rebuild (``targets.dense_targets``) spreads ``1 - sum(top-k)`` uniformly
  over the C - k classes outside the top-k. With k = C there is no tail and the rebuilt
  target is the mapped row itself, summing to less than 1. The name records the file's
  hash. ``num_classes``, the student's, is checked against the file's line count if given.
  """
  mapping = class_index_lib.read_class_index(class_index, num_classes, teacher.num_classes)
  with open(class_index, 'rb') as f:
    file_hash = hashlib.sha256(f.read()).hexdigest()
  gather = jax.jit(lambda probabilities: jnp.take(probabilities, mapping, axis=-1))
  return Teacher(f'{teacher.name}+classes:{os.path.basename(class_index)}:{file_hash[:16]}',
                 teacher.checkpoint_hash, len(mapping),
                 lambda images: gather(teacher.probabilities(images)))


def check_classes(teacher: Teacher, num_classes: int) -> None:
  """Refuses a teacher whose class count is not the student's ``num_classes``."""
  check_class_count(teacher.name, teacher.num_classes, num_classes)


def check_class_count(name: str, teacher_classes: int, num_classes: int) -> None:
  """``check_classes`` for a teacher not yet a record (the online one: a name and a count)."""
  if teacher_classes != num_classes:
    raise TeacherMismatch(
        f'The teacher {name} has {teacher_classes} classes and the student {num_classes}: '
        'its outputs cannot be the student\'s targets. Give a class-index file '
        '(distill.teacher_class_index: line c = the teacher class of student class c), '
        'or a teacher over the student\'s classes.')
