"""The student's side of FPD: stored teacher rows joined to its batches, and its targets.

``StoreTargets`` is the input pipeline's ``host_hook``
(``pipeline.make_input_pipeline(..., host_hook=StoreTargets(path, fields))``): for each
process-local batch it reads the stored rows of the batch's (epoch, position)s and checks
that each holds the example the student's own order puts there, so a store saved for
other data or another order can never silently train a student. The rows ride with the
batch to the devices as ``teacher_values`` (float16) and ``teacher_indices``.

``student_targets`` then turns them into dense (B, C) targets inside the jitted train
step. They are the teacher's view of the image the student sees, mixed pairs included
(the save pass ran the teacher on the mixed images), so they are used as they are: the
targets ``device_augment`` returns alongside the images are for labels and go unused.
"""
import jax
import jax.numpy as jnp
import numpy as np

from tinyvit_jax.distill import store
from tinyvit_jax.distill import targets

MODES = ('dense', 'soft', 'hard')


class StoreMismatchError(store.IncompatibleStore):
  """A stored row holds another example than the student's order has at its position."""


class StoreTargets:
  """Host hook: ``batch -> dict(batch, teacher_values=(B, k) float16, teacher_indices=(B, k))``.

  ``student_fields``: ``manifest.store_fields(source, ..., num_classes=C)`` of the
  student's run; a store saved for other data, seed, augmentation, k or C is refused
  here, naming each differing field with both values.
  """

  def __init__(self, store_path: str, student_fields: dict):
    self.store = store.LogitStore.open(store_path)
    self.store.check_compatible(student_fields)

  def __call__(self, batch: dict) -> dict:
    epochs, positions = np.asarray(batch['epoch']), np.asarray(batch['position'])
    expected = np.asarray(batch['index'])
    first = int(positions[0]) if len(positions) else 0
    if (len(positions) and np.all(epochs == epochs[0])
        and np.array_equal(positions, np.arange(first, first + len(positions)))):
      # A training batch: one epoch, contiguous positions, so one read and no gathers.
      values, indices, stored = self.store.read(int(epochs[0]), first, len(positions))
      self._check_examples(int(epochs[0]), positions, stored, expected)
      return dict(batch, teacher_values=values, teacher_indices=indices)
    values = np.empty((len(positions), self.store.k), np.float16)
    indices = np.empty((len(positions), self.store.k), self.store.index_dtype)
    for epoch in np.unique(epochs):
      rows = np.flatnonzero(epochs == epoch)
      first = int(positions[rows].min())
      span = self.store.read(int(epoch), first, int(positions[rows].max()) - first + 1)
      at = positions[rows] - first
      values[rows], indices[rows] = span[0][at], span[1][at]
      self._check_examples(int(epoch), positions[rows], span[2][at], expected[rows])
    return dict(batch, teacher_values=values, teacher_indices=indices)

  def _check_examples(self, epoch: int, positions, stored, expected) -> None:
    bad = np.flatnonzero(stored != expected)
    if len(bad):
      first = bad[0]
      raise StoreMismatchError(
          f'epoch {epoch}, position {positions[first]}: the logit store at '
          f'{self.store.path} holds example {stored[first]}, but this run\'s order has '
          f'example {expected[first]} there ({len(bad)} of {len(positions)} rows of the '
          'batch differ). The store was saved for another order: check the seed and data.')


def student_targets(batch: dict, num_classes: int, mode: str = 'dense', tau: float = 1.0):
  """Dense float32 (B, C) targets from a batch's stored rows; pure jax.numpy, for jit.

  ``mode``: 'dense', the official FPD rebuild (``targets.dense_targets``), for soft-target
  cross-entropy; 'soft', DeiT's soft distillation at temperature ``tau``
  (``targets.tempered_targets``); 'hard', DeiT's hard distillation: the one-hot of the
  stored top-1 class.
  """
  values, indices = batch['teacher_values'], batch['teacher_indices']
  if mode == 'dense':
    return targets.dense_targets(values, indices, num_classes)
  if mode == 'soft':
    return targets.tempered_targets(values, indices, num_classes, tau)
  if mode == 'hard':
    return jax.nn.one_hot(jnp.asarray(indices[..., 0], jnp.int32), num_classes,
                          dtype=jnp.float32)
  raise ValueError(f'student_targets mode={mode!r}; expected one of {MODES}.')
