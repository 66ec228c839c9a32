"""Process-local batches for training and evaluation, read and transformed by grain.

One grain element is one process-local batch: ``MapDataset.range(steps).map(batch)``.
Building a batch is a pure function of its global step (``order`` gives the positions
and example indices, ``keys.sample_key`` the per-example keys), so:
- resuming is ``train_batches(..., start_step=step)``: the loader's whole state is the
  step, which the trainer checkpoints anyway;
- worker processes (``num_workers``) each build whole batches of their own steps, and
  grain hands them back in step order, so the output does not depend on the worker count.

The per-example transform runs where the batch is built, ``transform(record, key_data)``
-> dict of numpy arrays, with ``key_data`` the uint32 data of ``sample_key(seed, epoch,
index, repeat)`` for the example's dataset index and view (``order.epoch_examples``).
Transforms must be picklable (module-level) to reach the workers. Workers are spawned and
run JAX on CPU only, for the keys and the order, so they never claim an accelerator.

Every batch carries ``key`` (the sample keys' data, from which the device half of the
augmentation draws), ``label``, ``index`` (dataset index), ``repeat`` (which view of it,
under repeated augmentation), ``position`` (in the epoch's order) and ``epoch`` next to
the transform's outputs; evaluation batches add ``mask``.
"""
import dataclasses
import itertools
import sys
from typing import Callable, Iterator

from absl import flags
import grain
import jax
import numpy as np

from tinyvit_jax.data import keys
from tinyvit_jax.data import order
from tinyvit_jax.data.sources import decode

Transform = Callable[[dict, np.ndarray], dict]


def raw_image(record: dict, key_data: np.ndarray) -> dict:
  """The default transform: the decoded image as is."""
  del key_data
  return dict(image=record['image'])


@jax.jit
def _sample_key_data(seed, epoch, indices, repeats):
  return jax.vmap(
      lambda index, repeat: jax.random.key_data(keys.sample_key(seed, epoch, index, repeat)))(
          indices, repeats)


def _cpu():
  return jax.local_devices(backend='cpu')[0]


@dataclasses.dataclass
class _ProcessBatch:
  """Step -> this process's batch: the picklable function grain maps over steps.

  Training reads the epoch's permuted order (with ``repeats``; under a bounded store
  of ``views``, the order of the epoch it replays, whose number ``epoch`` then holds);
  evaluation
  (``train=False``) reads dataset order once, with keys of epoch 0, and pads and masks
  its last batch.
  """
  source: object
  transform: Transform
  seed: int
  global_batch: int
  process_index: int
  process_count: int
  train: bool
  repeats: order.Repeats = order.Repeats()
  views: int = 0

  def __call__(self, step: int) -> dict:
    n = len(self.source)
    with jax.default_device(_cpu()):
      if self.train:
        epoch, batch = order.epoch_and_batch(
            step, order.steps_per_epoch(n, self.global_batch, self.repeats))
        epoch = order.stored_epoch(self.seed, epoch, self.views)
        positions = order.process_positions(batch, self.global_batch, self.process_index,
                                            self.process_count)
        indices, repeats = order.epoch_examples(self.seed, epoch, n, positions, self.repeats)
        mask = {}
      else:
        epoch = 0
        indices, valid = order.eval_positions(step, n, self.global_batch, self.process_index,
                                              self.process_count)
        positions, repeats, mask = indices, np.zeros_like(indices), dict(mask=valid)
    return dict(
        _examples(self.source, self.transform, self.seed, epoch, positions, indices, repeats),
        **mask)


def _examples(source, transform: Transform, seed: int, epoch: int, positions, indices,
              repeats) -> dict:
  """The stacked examples at ``positions`` of ``epoch`` (dataset ``indices``, views
  ``repeats``), transformed with their sample keys: the one place a batch is built,
  whatever chose its positions. An image that does not decode stops it, named
  (``decode.located``): one refusal for the save pass, the student and evaluation."""
  with jax.default_device(_cpu()):
    key_data = np.asarray(_sample_key_data(seed, epoch, indices, repeats))
  examples = []
  for position, index, repeat, key in zip(positions, indices, repeats, key_data):
    try:
      record = source[int(index)]
      example = transform(record, key)
    except decode.UndecodableImage as error:
      raise decode.located(error, source, index, epoch) from None
    examples.append(
        dict(example, key=key, label=record['label'], index=index, repeat=repeat, position=position,
             epoch=epoch))
  return {name: np.stack([example[name] for example in examples]) for name in examples[0]}


def batch_shapes(transform: Transform, batch: int, image_size: int, train: bool = True) -> dict:
  """The arrays of a ``train_batches`` (or, ``train=False``, ``eval_batches``) batch of
  ``batch`` examples as ``jax.ShapeDtypeStruct``s, from one blank ``image_size`` image
  through ``transform`` and the code that builds every batch: what a plan compiles for,
  reading no data."""
  blank = [dict(image=np.zeros((image_size, image_size, 3), np.uint8), label=0)]
  one = _examples(blank, transform, 0, 0, np.zeros(1, np.int64), np.zeros(1, np.int64),
                  np.zeros(1, np.int64))
  if not train:
    one['mask'] = np.ones(1, bool)
  return {
      name: jax.ShapeDtypeStruct((batch, *value.shape[1:]), value.dtype)
      for name, value in one.items()
  }


@dataclasses.dataclass
class _PositionBatch:
  """Batch number -> the examples at ``positions[b*batch:(b+1)*batch]`` of ``epoch``.

  The last batch is padded with copies of the last position (``mask`` False there), so
  shapes stay fixed; batches past the end are all padding, which grain's prefetch may ask for.
  """
  source: object
  transform: Transform
  seed: int
  epoch: int
  positions: np.ndarray
  batch: int
  repeats: order.Repeats = order.Repeats()

  def __call__(self, number: int) -> dict:
    wanted = number * self.batch + np.arange(self.batch)
    mask = wanted < len(self.positions)
    positions = self.positions[np.minimum(wanted, len(self.positions) - 1)]
    with jax.default_device(_cpu()):
      indices, repeats = order.epoch_examples(self.seed, self.epoch, len(self.source), positions,
                                              self.repeats)
    return dict(
        _examples(self.source, self.transform, self.seed, self.epoch, positions, indices, repeats),
        mask=mask)


def _use_cpu_only(worker_index: int, worker_count: int):
  """Worker init: JAX in a worker computes keys only, so keep it off accelerators."""
  del worker_index, worker_count
  jax.config.update('jax_platforms', 'cpu')


def _iterate(batch: _ProcessBatch, start_step: int, num_steps: int | None, num_workers: int,
             prefetch: int) -> Iterator[dict]:
  """Yields ``batch(step)`` for ``num_steps`` steps (None: forever), built on
  ``num_workers`` processes (0: this one), and closes grain's iterator at the end.

  grain is always given an endless range, and we stop reading: workers that run to the
  end of their slice leave shared memory that Python reports as leaked at exit (grain
  issue #1031). The few batches prefetched past the end are wasted, nothing more. (A
  rare race in grain's close can still leave one block, freed at exit with a warning.)
  """
  dataset = grain.MapDataset.range(start_step, sys.maxsize).map(batch).to_iter_dataset(
      grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch))
  if num_workers:
    if not flags.FLAGS.is_parsed():  # grain reads absl flags; outside absl.app nobody parsed them.
      flags.FLAGS.mark_as_parsed()
    dataset = dataset.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=prefetch),
        worker_init_fn=_use_cpu_only)
  iterator = iter(dataset)
  try:
    for built in itertools.islice(iterator, num_steps):
      # Workers hand over shared memory: copy out, so grain frees each block now, not
      # when the caller drops the batch (or at exit, with leak warnings).
      yield {name: np.array(value) for name, value in built.items()} if num_workers else built
  finally:
    iterator.close()


def train_batches(source, *, seed: int, global_batch: int, transform: Transform = raw_image,
                  process_index: int = 0, process_count: int = 1, start_step: int = 0,
                  num_steps: int | None = None, num_workers: int = 0, prefetch: int = 2,
                  repeats: order.Repeats = order.Repeats(), views: int = 0) -> Iterator[dict]:
  """This process's training batches from global step ``start_step`` on, epoch after epoch.

  Each epoch has ``epoch_length // global_batch`` steps (the incomplete tail is dropped,
  see ``order``, which also explains ``repeats`` and ``views``). Stops after ``num_steps``
  batches, or never. Close the iterator (or let it go) to stop the workers.
  """
  # Raise here, not in a worker, for an empty or small dataset, bad split or negative step.
  repeats = order.check_repeats(repeats)
  order.epoch_and_batch(start_step, order.steps_per_epoch(len(source), global_batch, repeats))
  order.process_positions(0, global_batch, process_index, process_count)  # checks the split
  batch = _ProcessBatch(source, transform, seed, global_batch, process_index, process_count,
                        train=True, repeats=repeats, views=order.check_views(views))
  return _iterate(batch, start_step, num_steps, num_workers, prefetch)


def eval_batches(source, *, global_batch: int, transform: Transform = raw_image,
                 process_index: int = 0, process_count: int = 1, num_workers: int = 0,
                 prefetch: int = 2, seed: int = 0) -> Iterator[dict]:
  """One pass over ``source`` in dataset order; weight metrics by the batches' ``mask``.

  Keys are those of epoch 0, for transforms that want one; evaluation ones need none.
  """
  steps = order.eval_steps(len(source), global_batch)
  order.process_positions(0, global_batch, process_index, process_count)  # checks the split
  batch = _ProcessBatch(source, transform, seed, global_batch, process_index, process_count,
                        train=False)
  return _iterate(batch, 0, steps, num_workers, prefetch)


def position_batches(source, *, seed: int, epoch: int, positions, batch: int,
                     transform: Transform = raw_image, num_workers: int = 0, prefetch: int = 2,
                     repeats: order.Repeats = order.Repeats()) -> Iterator[dict]:
  """Batches of the given epoch positions, in the order given, exactly as training sees
  them (same transform, same sample keys): what the FPD save pass feeds its teacher.

  ``positions`` is any 1-D sequence (a block of the store, or sampled Mixup pairs);
  consecutive runs of ``batch`` entries form a batch, and the last one is padded with
  copies of the last position and masked (``mask``). Keep Mixup pairs (2j, 2j + 1)
  adjacent and at even offsets, with ``batch`` even, and each pair mixes as in training.
  """
  positions = np.asarray(positions, np.int64)
  repeats = order.check_repeats(repeats)
  n = order.epoch_length(len(source), repeats)
  if batch < 1:
    raise ValueError(f'batch {batch} must be at least 1.')
  if positions.ndim != 1 or (len(positions) and (positions.min() < 0 or positions.max() >= n)):
    raise ValueError(f'positions must be a 1-D sequence in [0, {n}) (the epoch has {n}).')
  if not len(positions):
    return (b for b in ())  # a generator, closable like the others
  fn = _PositionBatch(source, transform, seed, epoch, positions, batch, repeats)
  return _iterate(fn, 0, -(-len(positions) // batch), num_workers, prefetch)
