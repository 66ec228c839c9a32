"""Which example sits at which position of which step: the epoch order and its split.

The order of epoch ``e`` is a permutation that depends on ``(seed, e)`` only. Position
``p`` of the epoch holds example ``epoch_permutation(seed, e, n)[p]``. Global batch ``b``
is positions ``[b*B, (b+1)*B)``, and process ``k`` of ``P`` reads the contiguous slice
``[k*B/P, (k+1)*B/P)`` of it. Global step ``s`` is batch ``s % steps_per_epoch`` of epoch
``s // steps_per_epoch``. Everything is arithmetic on the step, so a run resumes from its
step alone and sees the same examples whatever its host count.

Tail policy: training drops the incomplete last global batch of every epoch
(``steps_per_epoch = epoch_length // B``), so every step has the same shape; as the order changes
each epoch, the dropped examples change too. Evaluation keeps every example: its last
batch is padded and masked (``eval_positions``).

Repeated augmentation (DeiT's RASampler, ``Repeats(count=r)``): the epoch keeps the
plain sampler's size, as DeiT does, but holds ``n // r`` distinct examples, each seen ``r``
times, each view with its own key ``keys.sample_key(seed, e, i, repeat)``. The epoch has
``epoch_length(n, r) = n - n % r`` positions, cut into blocks of ``r * stride``; position
``j`` of a block holds repeat ``j // stride`` of the block's ``j % stride``-th example, so
the views of one example sit ``stride`` positions apart. Since a device reads a
contiguous slice of its batch, the views land on different devices whenever the
per-device batch is at most ``stride``, and in one step when the global batch is a
multiple of ``r * stride`` -- as RASampler spreads them over ranks -- yet the layout is a
function of positions alone, so it is the same for every batch size and device count.
The epoch's last, partial block shrinks its stride to fit. Stride 64 matches DeiT's 64
images per GPU.

Bounded stores (``views``, an FPD student's ``distill.views_per_example`` = M): the
student's epoch ``e`` replays epoch ``stored_epoch(seed, e, M)`` of ``0..M-1`` whole:
its order, its keys and so its views and Mixup pairs. Each cycle of M epochs replays
each of the M in a keyed order, so every view is used equally often and the store holds
M epochs of rows for any number of epochs trained.

Mixup/CutMix pairs positions ``2j`` and ``2j+1``. A device's batch is a contiguous slice of
the global batch, so a pair stays on one device exactly when the per-device batch is even
(``check_mixup_batch``).
"""
import functools
from typing import NamedTuple

import jax
import numpy as np

from tinyvit_jax import errors
from tinyvit_jax.data import keys


class OrderError(errors.UserError, ValueError):
  """A batch, dataset or repeat setting no order can be made with: one line naming it."""


class Repeats(NamedTuple):
  """Repeated augmentation: ``count`` views of each example per epoch, ``stride``
  positions apart (see the module doc). ``Repeats()`` is the plain sampler."""
  count: int = 1
  stride: int = 64


def repeats_of(data) -> Repeats:
  """The run's repeated augmentation, from its ``config.data``."""
  return Repeats(data.num_repeats, data.repeat_stride)


def check_repeats(repeats: Repeats) -> Repeats:
  """``repeats`` as ints, or a ValueError naming the bad field."""
  count, stride = int(repeats.count), int(repeats.stride)
  if count < 1 or count != repeats.count:
    raise OrderError(f'num_repeats={repeats.count} must be a whole number >= 1 (1: no '
                     'repeated augmentation; DeiT uses 3).')
  if stride < 1 or stride != repeats.stride:
    raise OrderError(f'repeat_stride={repeats.stride} must be a whole number >= 1; make it '
                     'at least the per-device batch so that views land on different devices.')
  return Repeats(count, stride)


def epoch_length(n: int, repeats: Repeats = Repeats()) -> int:
  """Positions in a training epoch of ``n`` examples: ``n``, less ``n % repeats.count``."""
  _check_not_empty(n)
  return n - n % repeats.count


def epoch_examples(seed: int, epoch: int, n: int, positions,
                   repeats: Repeats = Repeats()) -> tuple[np.ndarray, np.ndarray]:
  """(dataset index, repeat) at each of ``positions`` of ``epoch``: the one owner of the
  position -> view map. The first ``epoch_length // count`` examples of the epoch's
  permutation each appear ``count`` times (see the module doc); ``Repeats()`` gives the
  permutation itself with repeat 0."""
  count, stride = check_repeats(repeats)
  length = epoch_length(n, repeats)
  positions = np.asarray(positions, np.int64)
  if positions.size and (positions.min() < 0 or positions.max() >= length):
    raise ValueError(f'positions must lie in [0, {length}), the epoch\'s length.')
  block_size = count * stride
  block, offset = np.divmod(positions, block_size)
  width = np.minimum(stride, (length - block * block_size) // count)  # the last block's is less
  slot = block * stride + offset % width
  return epoch_permutation(seed, epoch, n)[slot], offset // width


@functools.lru_cache(maxsize=2)
def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The example index at each position of ``epoch``: a permutation of ``range(n)``.

  The key comes from ``keys.order_key``; the shuffle itself is numpy's Philox-driven
  ``Generator.permutation`` keyed by that key's 64 bits. It is a pure function of its
  arguments, takes under a second at n = 14M, where ``jax.random.permutation`` takes
  about 11 s on a CPU core, and runs in loader workers without touching an accelerator.
  Cached because every batch of an epoch reads the same permutation (read-only).
  """
  _check_not_empty(n)
  order = keys.numpy_generator(jax.random.key_data(keys.order_key(seed, epoch))).permutation(n)
  order.flags.writeable = False
  return order


def check_views(views: int) -> int:
  """A bounded store's ``views`` as an int, or a ValueError naming the setting."""
  if views < 0 or views != int(views):
    raise OrderError(f'distill.views_per_example={views} must be a whole number >= 0 (0: '
                     'one view per epoch trained).')
  return int(views)


@functools.lru_cache(maxsize=64)
def stored_epoch(seed: int, epoch: int, views: int = 0) -> int:
  """The epoch whose order, keys and stored rows the student's ``epoch`` replays: itself
  without a bound (``views`` 0), else entry ``epoch % views`` of cycle ``epoch // views``'s
  keyed permutation of ``range(views)``."""
  if not check_views(views):
    return epoch
  cycle, offset = divmod(epoch, views)
  generator = keys.numpy_generator(jax.random.key_data(keys.views_key(seed, cycle)))
  return int(generator.permutation(views)[offset])


def steps_per_epoch(n: int, global_batch: int, repeats: Repeats = Repeats()) -> int:
  """Training steps in one epoch of ``n`` examples (``epoch_length`` positions): the
  incomplete last global batch is dropped."""
  length = epoch_length(n, repeats)
  if global_batch < 1:
    raise OrderError(f'global batch {global_batch} must be at least 1.')
  if length < global_batch:
    held = '' if length == n else f' ({length} positions under {repeats.count} repeats)'
    raise OrderError(f'The dataset has {n} examples{held}, fewer than one global batch of '
                     f'{global_batch}, so a training epoch would have no step. '
                     'Lower the batch size or use more data.')
  return length // global_batch


def epoch_and_batch(step: int, steps_in_epoch: int) -> tuple[int, int]:
  """(epoch, batch within the epoch) of global training step ``step``."""
  if step < 0:
    raise ValueError(f'step {step} must be non-negative.')
  return divmod(step, steps_in_epoch)


def process_batch_size(global_batch: int, process_count: int) -> int:
  """Examples each process loads per step; the global batch must split evenly."""
  if global_batch % process_count:
    raise OrderError(f'global batch {global_batch} does not split over {process_count} '
                     f'processes; make it a multiple of {process_count}.')
  return global_batch // process_count


def process_positions(batch: int, global_batch: int, process_index: int,
                      process_count: int) -> np.ndarray:
  """Epoch positions that process ``process_index`` loads for global batch ``batch``."""
  per_process = process_batch_size(global_batch, process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f'process index {process_index} is outside [0, {process_count}).')
  start = batch * global_batch + process_index * per_process
  return np.arange(start, start + per_process)


def eval_steps(n: int, global_batch: int) -> int:
  """Evaluation steps over ``n`` examples: the last batch is padded, none dropped."""
  _check_not_empty(n)
  return -(-n // global_batch)


def eval_positions(batch: int, n: int, global_batch: int, process_index: int,
                   process_count: int) -> tuple[np.ndarray, np.ndarray]:
  """(positions, mask) of an evaluation batch, in dataset order.

  Positions past the end repeat the last example so shapes stay fixed; ``mask`` is False
  there, and metrics must weight by it.
  """
  positions = process_positions(batch, global_batch, process_index, process_count)
  return np.minimum(positions, n - 1), positions < n


def device_batch_size(global_batch: int, num_devices: int) -> int:
  """Examples each device augments per step; the global batch must split evenly."""
  if global_batch % num_devices:
    raise OrderError(f'global batch {global_batch} does not split over {num_devices} '
                     f'devices; make it a multiple of {num_devices}.')
  return global_batch // num_devices


def check_mixup_batch(global_batch: int, num_devices: int) -> int:
  """Per-device batch; raises unless it is whole and even, as Mixup pairs need."""
  per_device = device_batch_size(global_batch, num_devices)
  if per_device % 2:
    raise OrderError(f'Mixup/CutMix pairs positions 2j and 2j+1 on one device, so the '
                     f'per-device batch must be even, but global batch {global_batch} over '
                     f'{num_devices} devices gives {per_device}. Use a global batch that is '
                     f'a multiple of {2 * num_devices}, or turn Mixup and CutMix off.')
  return per_device


def _check_not_empty(n: int):
  if n < 1:
    raise OrderError('The dataset is empty (0 examples); check its path and split.')
