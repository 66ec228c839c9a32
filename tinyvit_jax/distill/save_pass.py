"""The FPD save pass: the teacher's top-k on every augmented view of epochs 0..E-1, stored.

For each epoch, each process runs the teacher on the positions of its own block of the
store (``LogitStore.owned_chunks``), built exactly as training builds them: the loader's
host transform with the keys of ``keys.sample_key``, then the training device
augmentation (``pipeline.make_device_augment``) including Mixup/CutMix. So the row at
position p of epoch e is the teacher's softmax on the very image (mixed, if it was) that
a student sees at that position, and the student uses it as it stands: a mixed pair's
target is what the teacher saw of the mixed image, and nothing is mixed twice.

Every position of an epoch is stored, the tail included: a batch past the end of the
positions is padded with copies of the last one and only the real rows are written. An
odd last position (n odd) thus "mixes" with a copy of itself; training at an even batch
never reads it. Processes never step together: each runs its own block on its own
devices, and they meet only at the end of each epoch, where process 0 marks it done.

A resumed save (rerun the same call) skips done epochs and chunks already on disk and
starts at the first missing chunk; its files are byte-identical to an uninterrupted
save's, since a chunk's bytes depend only on its rows and a row only on its image.
"""
import contextlib
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tinyvit_jax import errors
from tinyvit_jax import progress
from tinyvit_jax.data import augment
from tinyvit_jax.data import loader
from tinyvit_jax.data import order
from tinyvit_jax.data import pipeline
from tinyvit_jax.distill import manifest
from tinyvit_jax.distill import store


def local_mesh(mesh: Mesh | None = None) -> Mesh:
  """A 'data' mesh over this process's devices (of ``mesh``, default all local ones)."""
  return pipeline.data_mesh(jax.local_devices(
  ) if mesh is None else [d for d in mesh.devices.flat if d.process_index == jax.process_index()])


def make_teacher_view(teacher, aug_config, *, mesh: Mesh, batch: int, source_classes: int):
  """``host batch -> (B, C) probabilities``: training's device augmentation of a loader
  batch (with ``augment.make_train_augment(aug_config).host`` as transform), then the
  teacher. ``batch`` rows are spread over the mesh's devices."""
  device_augment = teacher_inputs(aug_config, mesh, batch, source_classes)
  sharding = NamedSharding(mesh, P('data'))

  def view(host_batch: dict):
    on_device = {name: jax.device_put(host_batch[name], sharding) for name in ('image', 'key')}
    return teacher.probabilities(device_augment(on_device, labels=False)[0])

  return view


def teacher_inputs(aug_config, mesh: Mesh, batch: int, source_classes: int):
  """The jitted device augmentation the teacher's images come from: training's."""
  return pipeline.make_device_augment(augment.make_train_augment(aug_config), mesh, batch,
                                      source_classes)


@functools.partial(jax.jit, static_argnames='k')
def top_k_rows(probabilities, k: int):
  """(top-k values float16 sorted descending, their class indices, row is finite)."""
  values, indices = jax.lax.top_k(probabilities, k)
  return values.astype(jnp.float16), indices, jnp.isfinite(probabilities).all(axis=-1)


def save_logits(teacher, source, *, dataset_name: str, aug_config, seed: int, epochs: int, k: int,
                store_path: str, global_batch: int, mesh: Mesh | None = None, num_workers: int = 0,
                progress: bool = True, chunk_rows: int = store.DEFAULT_CHUNK_ROWS,
                repeats: order.Repeats = order.Repeats(), views: int = 0) -> store.LogitStore:
  """Stores ``teacher``'s top-k rows of epochs ``0..epochs-1`` at ``store_path``.

  Creates the store, or resumes the one there (refused, naming each field, if it was
  saved for other data, augmentation, seed, k, C or teacher; its ``chunk_rows`` wins).
  ``global_batch`` is split over processes, and each process's share over its devices
  of ``mesh`` (default: all local ones); with Mixup/CutMix a device's share must be even.
  ``num_workers`` loader processes build the batches. Under repeated augmentation
  (``repeats``) each view is a row of its own. A bounded store records its ``views``
  (then ``epochs`` is ``views``: the student replays those, ``order.stored_epoch``).
  Returns the store, complete.
  """
  if not 1 <= k <= teacher.num_classes:
    raise ValueError(f'top-k k={k} must be between 1 and the teacher\'s class count '
                     f'C={teacher.num_classes}; lower k.')
  process_index, process_count = jax.process_index(), jax.process_count()
  mesh = local_mesh(mesh)
  batch = order.process_batch_size(global_batch, process_count)
  view = make_teacher_view(teacher, aug_config, mesh=mesh, batch=batch,
                           source_classes=source.num_classes)
  logits = _create_or_resume(
      store_path,
      manifest.store_fields(source, dataset_name=dataset_name, aug_config=aug_config, seed=seed,
                            k=k, teacher=teacher, repeats=repeats, views=views), chunk_rows)
  host = augment.make_train_augment(aug_config).host
  todo = {
      epoch: _missing_positions(logits, epoch, process_index, process_count)
      for epoch in range(epochs)
      if epoch not in logits.epochs_done
  }
  shown = _Progress(sum(len(p) for p in todo.values()), progress, os.path.basename(store_path))
  with contextlib.closing(shown.bar):
    for epoch, positions in todo.items():
      batches = loader.position_batches(source, seed=seed, epoch=epoch, positions=positions,
                                        batch=batch, transform=host, num_workers=num_workers,
                                        repeats=repeats)
      with contextlib.closing(batches), logits.epoch_writer(epoch, process_index,
                                                            process_count) as writer:
        finish = functools.partial(_write_rows, writer, epoch, shown)
        pending = None
        for host_batch in batches:
          # Dispatch this batch, then fetch and write the previous one while it runs.
          result = top_k_rows(view(host_batch), k)
          if pending is not None:
            finish(*pending)
          pending = (host_batch, result)
        if pending is not None:
          finish(*pending)
      _sync(f'fpd epoch {epoch} written', process_count)
      if process_index == 0:
        logits.mark_epoch_done(epoch)
      _sync(f'fpd epoch {epoch} done', process_count)
  return store.LogitStore.open(store_path)


def _create_or_resume(path: str, meta: dict, chunk_rows: int) -> store.LogitStore:
  """Process 0 creates the store if it is new; every process then opens and checks it."""
  if jax.process_index() == 0 and not os.path.exists(os.path.join(path, 'manifest.json')):
    store.LogitStore.create(path, meta, chunk_rows)
  _sync('fpd store created', jax.process_count())
  logits = store.LogitStore.open(path)
  logits.check_compatible(meta)
  teacher_changes = [
      f'{field}: store {logits.manifest[field]!r}, this save {meta[field]!r}'
      for field in ('teacher_name', 'teacher_checkpoint_hash')
      if logits.manifest[field] != meta[field]
  ]
  if teacher_changes:
    raise store.IncompatibleStore(
        f'The logit store at {path} was saved with another teacher; resuming would mix two '
        f'teachers\' rows: {"; ".join(teacher_changes)}. Give the teacher it was saved with, '
        'or another --config.distill.store.')
  return logits


def _missing_positions(logits: store.LogitStore, epoch: int, process_index: int,
                       process_count: int) -> np.ndarray:
  """Positions of this process's chunks of ``epoch`` not yet on disk, ascending.

  Runs of missing chunks start at even positions and, but for the epoch's end, have even
  lengths, so Mixup pairs stay adjacent at even offsets of the concatenation.
  """
  chunks = logits.missing_chunks(epoch, process_index, process_count)
  if not chunks:
    return np.zeros(0, np.int64)
  return np.concatenate(
      [np.arange(logits.chunk_positions(c).start,
                 logits.chunk_positions(c).stop) for c in chunks])


class NonFiniteTeacher(errors.UserError, FloatingPointError):
  """The teacher's rows of a batch are not finite; nothing of the batch was written."""


def _write_rows(writer, epoch: int, progress: '_Progress', host_batch: dict, result) -> None:
  """Writes a batch's real rows, contiguous run by run; refuses non-finite teacher rows."""
  values, indices, finite = jax.device_get(result)
  real = int(host_batch['mask'].sum())  # padding only ever follows the real rows
  positions, example = host_batch['position'][:real], host_batch['index'][:real]
  if not finite[:real].all():
    bad = np.flatnonzero(~finite[:real])[0]
    raise NonFiniteTeacher(
        f'epoch {epoch}: the teacher returned non-finite probabilities in the batch of '
        f'positions {positions[0]}..{positions[-1]} (first at position {positions[bad]}, '
        f'example {example[bad]}). Nothing of this batch was written; the chunks committed '
        'before it are valid, and rerunning the save resumes at the first missing chunk.')
  indices = indices[:real].astype(writer.store.index_dtype)
  breaks = np.flatnonzero(np.diff(positions) != 1) + 1
  for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, real]):
    writer.write(int(positions[lo]), values[lo:hi], indices[lo:hi], example[lo:hi])
    progress.count_chunks(writer.store, epoch, int(positions[lo]), int(positions[hi - 1]))
  progress.update(real)


class _Progress:
  """tqdm's images/s and ETA, plus the bytes of the chunks this run has committed."""

  def __init__(self, total: int, enabled: bool, name: str):
    self.bar = progress.bar(total=total, unit='img', unit_scale=True, disable=not enabled,
                            desc=f'FPD save {name}')
    self.bytes = 0
    self.counted = set()

  def count_chunks(self, logits: store.LogitStore, epoch: int, first: int, last: int):
    for chunk in range(first // logits.chunk_rows, last // logits.chunk_rows + 1):
      path = logits.chunk_path(epoch, chunk)
      if (epoch, chunk) not in self.counted and os.path.exists(path):
        self.counted.add((epoch, chunk))
        self.bytes += os.path.getsize(path)

  def update(self, images: int):
    self.bar.set_postfix_str(f'{_size_text(self.bytes)} written', refresh=False)
    self.bar.update(images)


def _size_text(size: float) -> str:
  for unit in ('B', 'KiB', 'MiB'):
    if size < 1024:
      return f'{size:.1f} {unit}'
    size /= 1024
  return f'{size:.1f} GiB'


def _sync(name: str, process_count: int) -> None:
  if process_count > 1:
    multihost_utils.sync_global_devices(name)
