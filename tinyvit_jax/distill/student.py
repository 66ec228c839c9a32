"""The student's side of distillation: where its teacher's outputs come from, and its loss.

``make(config, source, workdir, mesh)`` and ``make_inputs`` are all the trainer asks of
this package: the first what the input pipeline needs (the store's hook), the second the
train step's images and targets. Per ``distill.kind`` and ``distill.from_store``:

- ``'none'``: labels, smoothed and mixed by the device augmentation; a distilled DeiT
  trains its class head only, as the official code does.
- ``'fpd'``: soft-target cross-entropy against the teacher's distribution on the very
  image the student sees, no labels. From a store (FPD proper): the stored top-k row
  rebuilt dense; the teacher saw the mixed image, so the row is already the mixed image's
  target. Online: the teacher's full softmax at every step, the loss FPD approximates.
- ``'soft'`` / ``'hard'``: DeiT distillation (``losses``): the cls head learns from the
  labels, the distillation head from the teacher, online or from the store.

Stored rows reach the batch on the host: ``StoreTargets`` is the input pipeline's
``host_hook``. For each process-local batch it reads the rows of the batch's (epoch,
position)s and checks that each holds the example the student's own order puts there,
so a store saved for other data or another order can never silently train a student.
The rows ride with the batch to the devices as ``teacher_values`` (float16) and
``teacher_indices``; an online teacher runs in the jitted step. Either way
``make_inputs`` turns them, with the labels, into the step's targets.
"""
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tinyvit_jax.data import order
from tinyvit_jax.distill import losses
from tinyvit_jax.distill import manifest
from tinyvit_jax.distill import store
from tinyvit_jax.distill import targets
from tinyvit_jax.distill.teachers import jax_teacher


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


def make_inputs(config, device_augment: Callable, teacher: Callable | None = None) -> Callable:
  """``inputs(batch, teacher_leaves) -> (images, targets)``, called by the train step: the
  one place a sample's targets are assembled, from its labels, its stored rows or the
  online teacher, for ``make_loss``. ``device_augment``: the input pipeline's (it mixes
  the labels with the images; FPD reads no labels, so none are made). ``teacher``:
  ``Student.teacher``, for an online teacher.

  ``targets``: ``labels`` (B, C), smoothed and mixed, unless FPD; FPD's ``teacher`` (B, C),
  the dense distribution (the stored top-k rebuilt, ``targets.dense_targets``, or the
  online teacher's softmax); DeiT's ``teacher_values`` and ``teacher_indices`` (stored) or
  ``teacher_logits`` (online).
  """
  kind, from_store, num_classes = config.distill.kind, config.distill.from_store, config.num_classes

  def inputs(batch, teacher_leaves):
    images, labels = device_augment(batch, labels=kind != 'fpd')
    wanted = {} if kind == 'fpd' else dict(labels=labels)
    if kind == 'none':
      return images, wanted
    if from_store:
      values, indices = batch['teacher_values'], batch['teacher_indices']
      if kind == 'fpd':
        return images, dict(teacher=targets.dense_targets(values, indices, num_classes))
      return images, dict(wanted, teacher_values=values, teacher_indices=indices)
    logits = jax.lax.stop_gradient(teacher(teacher_leaves, images))
    if kind == 'fpd':
      return images, dict(teacher=jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1))
    return images, dict(wanted, teacher_logits=logits)

  return inputs


def make_loss(config) -> Callable:
  """``loss(outputs, targets) -> mean loss`` for the config's distillation kind, on
  ``make_inputs``' targets."""
  kind, alpha, tau = config.distill.kind, config.distill.alpha, config.distill.tau

  def heads_mean(outputs, dense):
    heads = outputs if isinstance(outputs, tuple) else (outputs,)
    return sum(losses.soft_target_cross_entropy(h, dense) for h in heads) / len(heads)

  if kind == 'none':
    return lambda outputs, targets: losses.soft_target_cross_entropy(
        outputs[0] if isinstance(outputs, tuple) else outputs, targets['labels'])
  if kind == 'fpd':
    return lambda outputs, targets: heads_mean(outputs, targets['teacher'])
  if config.distill.from_store:
    return lambda outputs, targets: losses.deit_loss_from_topk(outputs, targets['labels'], targets[
        'teacher_values'], targets['teacher_indices'], kind=kind, alpha=alpha, tau=tau)
  return lambda outputs, targets: losses.deit_loss(outputs, targets['labels'], targets[
      'teacher_logits'], kind=kind, alpha=alpha, tau=tau)


class Student(NamedTuple):
  """What a training run needs from distillation."""
  views: int  # a bounded store's epochs, which the input replays (order.stored_epoch)
  host_hook: Callable | None  # joins stored rows to each host batch
  teacher: Callable | None  # online: (teacher_leaves, images) -> logits, in the step
  teacher_leaves: list | None
  loss: Callable  # (outputs, targets) -> mean loss


def make(config, source, workdir: str, mesh) -> Student:
  """The config's student: its store hook or online teacher (or neither), and its loss."""
  distill, host_hook, teacher, leaves = config.distill, None, None, None
  views = distill.views_per_example if distill.from_store else 0
  if distill.kind != 'none' and distill.from_store:
    host_hook = StoreTargets(
        store.location(distill, workdir),
        manifest.store_fields(source, dataset_name=config.data.name or config.data.source,
                              aug_config=config.aug, seed=config.seed, k=distill.k,
                              num_classes=config.num_classes, repeats=order.repeats_of(config.data),
                              views=views))
  elif distill.kind != 'none':
    teacher, leaves = jax_teacher.online(distill, config.aug, mesh, config.num_classes)
  return Student(views, host_hook, teacher, leaves, make_loss(config))
