"""A training run's input: loader batches as global arrays, and their device augmentation.

``make_input_pipeline`` joins the loader (``loader.train_batches``, with the host crop of
``augment`` as its transform) to a data-parallel mesh (axis ``'data'``). Each process
loads its contiguous slice of the global batch, and ``jax.make_array_from_process_local_data``
puts that slice on the process's devices, so device ``d`` holds a contiguous run of
positions.

``device_augment`` runs the device half of ``augment`` under ``shard_map``: each device
augments its own rows and nothing crosses devices. Mixup pairs (positions 2j, 2j+1) are
then on one device only when the per-device batch is even, which is checked here, with
the numbers, before any data is read. Every device also runs the same program on the
same per-device shape as a single device would, so an example's bits do not depend on the
device count.
"""
import collections
import functools
import itertools
from typing import Callable, Iterator, NamedTuple

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from tinyvit_jax.data import augment
from tinyvit_jax.data import loader
from tinyvit_jax.data import order
from tinyvit_jax.data.augment import mix

DEVICE_PREFETCH = 2  # global batches on their way to the devices, as big_vision keeps


class InputPipeline(NamedTuple):
  """``batches``: global batches from the start step on, dicts of arrays sharded over the
  mesh's ``'data'`` axis (the loader's image, key, label, index, position, epoch).

  ``device_augment``: jitted ``(batch, labels=True) -> (images float32 (B, H, W, 3),
  labels (B, classes))``, to call inside the train step: the smoothed one-hot labels,
  mixed as their images are; ``labels=False`` (FPD, whose targets are the teacher's)
  makes none and gives None.
  """
  batches: Iterator[dict]
  device_augment: Callable


def data_mesh(devices=None) -> Mesh:
  """A 1-D mesh over ``devices`` (default: all, in ``jax.devices()`` order, which puts
  each process's devices together, as the contiguous per-process slices need)."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), ('data',))


def make_input_pipeline(source, aug_config, *, seed: int, global_batch: int,
                        mesh: Mesh | None = None, label_smoothing: float = 0.0, start_step: int = 0,
                        num_steps: int | None = None, num_workers: int = 0,
                        host_hook: Callable[[dict], dict] | None = None,
                        repeats: order.Repeats = order.Repeats(), views: int = 0) -> InputPipeline:
  """The input of a training run from global step ``start_step`` on (a resume is just a
  later start step). ``aug_config``: ``augment.make_train_augment``'s settings;
  ``repeats``: repeated augmentation; ``views``: a bounded store's (``order``).

  ``host_hook(batch) -> batch``, if given, sees each process-local numpy batch before it
  becomes a global array: FPD joins the stored teacher rows to the batch there
  (``distill.student.StoreTargets``). Arrays it adds must have the batch's leading dimension.
  """
  mesh = data_mesh() if mesh is None else mesh
  train_augment = augment.make_train_augment(aug_config)
  sharding = NamedSharding(mesh, P('data'))
  device_augment = make_device_augment(train_augment, mesh, global_batch, source.num_classes,
                                       label_smoothing)
  host_batches = loader.train_batches(source, seed=seed, global_batch=global_batch,
                                      transform=train_augment.host,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count(), start_step=start_step,
                                      num_steps=num_steps, num_workers=num_workers, repeats=repeats,
                                      views=views)
  if host_hook is not None:
    host_batches = map(host_hook, host_batches)
  batches = ({
      name: jax.make_array_from_process_local_data(sharding, value) for name, value in batch.items()
  } for batch in host_batches)
  return InputPipeline(prefetch(batches, DEVICE_PREFETCH), device_augment)


def prefetch(iterator: Iterator, size: int) -> Iterator:
  """``iterator``'s items, each pulled ``size`` items ahead of its use: a batch's transfer
  to the devices starts while earlier steps run, so a fast step never waits for it.

  An error met while reading ahead (an image that does not decode, a damaged store chunk)
  is raised where its item would have come, so every step before it runs and can be saved.
  """
  ahead, failed = collections.deque(), []

  def pull(count: int) -> None:
    if not failed:
      try:
        ahead.extend(itertools.islice(iterator, count))
      except Exception as error:  # any error: raised in turn, below
        failed.append(error)

  pull(size)
  while ahead:
    pull(1)
    yield ahead.popleft()
  if failed:
    raise failed[0]


def make_device_augment(train_augment: augment.Augment, mesh: Mesh, global_batch: int,
                        num_classes: int, label_smoothing: float = 0.0) -> Callable:
  """``InputPipeline.device_augment`` over ``mesh`` for batches of ``global_batch`` (see
  there); checked here, with the numbers, to keep Mixup pairs on one device. The FPD
  save pass calls this too, so its teacher sees the student's very images."""
  check = order.check_mixup_batch if train_augment.mixes else order.device_batch_size
  check(global_batch, mesh.size)
  per_device = jax.shard_map(train_augment.device, mesh=mesh, in_specs=P('data'),
                             out_specs=P('data'))

  @functools.partial(jax.jit, static_argnames='labels')
  def device_augment(batch, labels: bool = True):
    targets = mix.smooth_one_hot(batch['label'], num_classes, label_smoothing) if labels else None
    return per_device(batch['image'], batch['key'], targets)

  return device_augment
