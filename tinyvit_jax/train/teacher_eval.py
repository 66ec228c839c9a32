"""The teacher's rows on the eval split, against which a student's eval reports its top-1
agreement and KL(teacher || student) (Beyer et al., 2022).

The teacher runs once per run over the eval images: each process over its share of the
eval batches, the rows then gathered to every process. They are kept as the logit store
keeps rows: the top-k probabilities (``distill.k``, float16, descending) and their
classes, in dataset order; the eval step rebuilds each dense row by the store's rule
(``targets.dense_targets``: what the top-k leave, spread evenly over the other classes).
At k = 100 a 21k-class split takes 400 bytes an image, against 87 kB of dense float32;
what the rebuild changes in the KL is measured in benchmarks/RESULTS.md ("Teacher eval
rows").

They are kept in ``WORKDIR/teacher_eval.npz`` with what they were made from: the
teacher's weights hash and the settings that change its outputs, the dataset, the
split's size, the preprocessing and k. Our checkpoints record their weights hash in
``model.json``, so a restart recognises its file without restoring the teacher; a timm or
torch teacher, or a checkpoint saved before the hash was recorded, is restored to be
hashed. A file made from anything else, or unreadable, is recomputed. It is written to a
temporary file and renamed, so a kill leaves the old file or none. The teacher sees the
student's eval images normalised as the student's training views are (``config.aug``),
which is what ``make_teacher`` expects.
"""
import hashlib
import json
import os
import zipfile
from typing import NamedTuple

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tinyvit_jax import model_checkpoint
from tinyvit_jax import progress
from tinyvit_jax import target
from tinyvit_jax import writes
from tinyvit_jax.data import augment
from tinyvit_jax.data import loader
from tinyvit_jax.data import pipeline
from tinyvit_jax.distill import save_pass
from tinyvit_jax.distill import store
from tinyvit_jax.distill.teachers import factory
from tinyvit_jax.distill.teachers import record
from tinyvit_jax.distill.teachers import torch_teacher

FILE = 'teacher_eval.npz'
# The distill settings besides the weights that change the teacher's rows.
_TEACHER_FIELDS = ('teacher_adapter', 'teacher_model', 'teacher_kwargs', 'teacher_num_classes',
                   'teacher_mean', 'teacher_std')


class Rows(NamedTuple):
  """The teacher's top-k rows of the eval split, in dataset order."""
  values: np.ndarray  # (N, k) float16, descending
  indices: np.ndarray  # (N, k) their classes (``store.index_dtype``)


def knows_teacher(config) -> bool:
  """Whether the run distils from a teacher it names, and so reports agreement with it
  (unless ``distill.eval_teacher`` is off: a teacher too large to run beside the
  student at eval, or a test that has no use for the figures)."""
  return (bool(config.distill.teacher) and config.distill.kind != 'none'
          and config.distill.eval_teacher)


def rows(config, source, workdir: str) -> Rows:
  """The teacher's rows of the eval ``source``: the workdir's file when it was made from
  this teacher and split, else computed (each process its share; process 0 writes)."""
  distill, teacher = config.distill, None
  checkpoint_hash = _recorded_hash(distill)
  if checkpoint_hash is None:  # only the weights themselves tell
    teacher = factory.make_teacher(distill, config.aug, config.num_classes)
    checkpoint_hash = teacher.checkpoint_hash
  path = os.path.join(workdir, FILE)
  kept = _read(path, _made_for(config, source, checkpoint_hash))
  if kept is not None:
    return kept
  teacher = teacher or factory.make_teacher(distill, config.aug, config.num_classes)
  made_for = _made_for(config, source, teacher.checkpoint_hash)  # the weights' own hash
  share = compute_share(teacher, source, _preprocess(config), config.eval_batch_size, distill.k,
                        jax.process_index(), jax.process_count())
  kept = assemble(jax.tree.map(np.asarray, multihost_utils.process_allgather(share)), len(source),
                  config.num_classes)
  if jax.process_index() == 0:
    _write(path, kept, made_for)
  del teacher  # the last reference: torch's cached GPU memory can only then be released
  torch_teacher.release_gpu_memory()
  return kept


def compute_share(teacher, source, preprocess: dict, global_batch: int, k: int, process_index: int,
                  process_count: int) -> dict:
  """This process's share: the teacher over the rows of the eval batches it reads,
  spread over its devices. Every process's share has the same shape (the batches are
  padded), as a gather needs: ``index``, ``mask``, ``values`` and ``indices`` per row."""
  eval_augment = augment.make_eval_augment(preprocess)
  sharding = NamedSharding(pipeline.data_mesh(jax.local_devices()), P('data'))
  parts = []
  shown = progress.bar(total=len(source) // process_count, desc='teacher on eval', unit='img',
                       disable=process_index != 0)
  with shown:
    for host_batch in loader.eval_batches(source, global_batch=global_batch,
                                          transform=eval_augment.host, process_index=process_index,
                                          process_count=process_count):
      images = eval_augment.device(jax.device_put(host_batch['image'], sharding))
      values, indices, _ = save_pass.top_k_rows(teacher.probabilities(images), k)
      parts.append(
          dict(index=host_batch['index'], mask=host_batch['mask'], values=np.asarray(values),
               indices=np.asarray(indices)))
      shown.update(int(host_batch['mask'].sum()))
  return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def assemble(shares: dict, size: int, num_classes: int) -> Rows:
  """The rows in dataset order from every process's share (stacked on a leading axis)."""
  flat = {name: value.reshape((-1,) + value.shape[2:]) for name, value in shares.items()}
  real = flat['mask'].astype(bool)
  index = flat['index'][real]
  values = np.empty((size, flat['values'].shape[-1]), np.float16)
  indices = np.empty(values.shape, store.index_dtype(num_classes))
  values[index], indices[index] = flat['values'][real], flat['indices'][real]
  return Rows(values, indices)


def _recorded_hash(distill) -> str | None:
  """The weights hash our teacher checkpoint's ``model.json`` records, or None."""
  if distill.get('teacher_adapter', 'ours') != 'ours':
    return None
  return model_checkpoint.read_model_json(distill.teacher).get('weights_hash')


def _made_for(config, source, checkpoint_hash: str) -> dict:
  """What the rows depend on, as JSON reads it back."""
  distill = config.distill
  class_index = distill.get('teacher_class_index', '')
  if class_index:
    with open(class_index, 'rb') as f:
      class_index = hashlib.sha256(f.read()).hexdigest()
  return writes.plain_json(
      dict(teacher_checkpoint_hash=checkpoint_hash,
           teacher_dtype=target.compute_dtype(distill.get('teacher_dtype', 'float32')),
           teacher_class_index=class_index, **{name: distill.get(name) for name in _TEACHER_FIELDS},
           dataset=config.data.name or config.data.source, eval_size=len(source),
           num_classes=config.num_classes, preprocess=_preprocess(config), k=distill.k))


def _preprocess(config) -> dict:
  """The student's eval preprocessing, normalised as its training views are."""
  mean, std = record.student_normalisation(config.aug)
  return dict(config.eval_aug, mean=mean, std=std)


def _read(path: str, made_for: dict) -> Rows | None:
  """The file's rows if it was made for ``made_for``; None if absent, made for another
  teacher or split, or unreadable."""
  try:
    with np.load(path) as f:
      if json.loads(str(f['made_for'])) != made_for:
        return None
      kept = Rows(f['values'], f['indices'])
  except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile):
    return None
  shape = (made_for['eval_size'], made_for['k'])
  whole = (kept.values.shape == kept.indices.shape == shape and kept.values.dtype == np.float16
           and kept.indices.dtype == store.index_dtype(made_for['num_classes']))
  return kept if whole else None


def _write(path: str, kept: Rows, made_for: dict) -> None:
  with writes.replacing(path) as tmp, open(tmp, 'wb') as f:
    np.savez(f, values=kept.values, indices=kept.indices, made_for=json.dumps(made_for))
