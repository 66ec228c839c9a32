"""The teacher's probabilities on the eval split, against which a student's eval reports
its top-1 agreement and KL(teacher || student) (Beyer et al., 2022).

They are computed once per run and kept in ``WORKDIR/teacher_eval.npz``: float32 rows in
dataset order, with what they were computed for (the teacher's name and checkpoint hash,
the dataset, the split's size, the preprocessing). A file made for anything else, or
unreadable, is recomputed. It is written to a temporary file and renamed, so a kill
leaves the old file or none. The teacher sees the student's eval images, normalised as
the student's training views are (``config.aug``), which is what ``make_teacher`` expects.
"""
import json
import os
import zipfile

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tinyvit_jax import full_disk
from tinyvit_jax.data import augment
from tinyvit_jax.data import loader
from tinyvit_jax.data import order
from tinyvit_jax.data import pipeline
from tinyvit_jax.distill import teacher as teacher_lib
from tinyvit_jax.distill import torch_teacher
from tinyvit_jax.train import metrics

FILE = 'teacher_eval.npz'


def knows_teacher(config) -> bool:
  """Whether the run distils from a teacher it names, and so reports agreement with it
  (unless ``distill.eval_teacher`` is off: a teacher too large to run beside the
  student at eval, or a test that has no use for the figures)."""
  return (bool(config.distill.teacher) and config.distill.kind != 'none'
          and config.distill.eval_teacher)


def probabilities(config, source, workdir: str) -> np.ndarray:
  """(N, C) float32: the teacher's probabilities of the eval ``source``, read from the
  workdir's file when it was made for this teacher and split, else computed (every
  process computes all N, as its eval batches may hold any row; process 0 writes)."""
  # Its hash names the file.
  teacher = teacher_lib.make_teacher(config.distill, config.aug, config.num_classes)
  mean, std = teacher_lib.student_normalisation(config.aug)
  preprocess = dict(config.eval_aug, mean=mean, std=std)
  made_for = json.loads(json.dumps(dict(
      teacher_name=teacher.name, teacher_checkpoint_hash=teacher.checkpoint_hash,
      dataset=config.data.name or config.data.source, eval_size=len(source),
      num_classes=config.num_classes, preprocess=preprocess)))
  path = os.path.join(workdir, FILE)
  rows = _read(path, made_for)
  if rows is None:
    rows = _compute(teacher, source, preprocess,
                    order.process_batch_size(config.eval_batch_size, jax.process_count()))
    if jax.process_index() == 0:
      _write(path, rows, made_for)
  del teacher  # the last reference: torch's cached GPU memory can only then be released
  torch_teacher.release_gpu_memory()
  return rows


def _compute(teacher, source, preprocess: dict, batch: int) -> np.ndarray:
  """The teacher over the eval images, spread over this process's devices."""
  eval_augment = augment.make_eval_augment(preprocess)
  sharding = NamedSharding(pipeline.data_mesh(jax.local_devices()), P('data'))
  rows = np.zeros((len(source), teacher.num_classes), np.float32)
  shown = metrics.bar(total=len(source), desc='teacher on eval', unit='img',
                      disable=jax.process_index() != 0)
  with shown:
    for host_batch in loader.eval_batches(source, global_batch=batch,
                                          transform=eval_augment.host):
      images = eval_augment.device(jax.device_put(host_batch['image'], sharding))
      mask = host_batch['mask']
      rows[host_batch['index'][mask]] = np.asarray(teacher.probabilities(images))[mask]
      shown.update(int(mask.sum()))
  return rows


def _read(path: str, made_for: dict) -> np.ndarray | None:
  """The file's rows if it was made for ``made_for``; None if absent, made for another
  teacher or split, or unreadable."""
  try:
    with np.load(path) as f:
      if json.loads(str(f['made_for'])) != made_for:
        return None
      rows = f['probabilities']
  except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile):
    return None
  shape = (made_for['eval_size'], made_for['num_classes'])
  return rows if rows.shape == shape and rows.dtype == np.float32 else None


def _write(path: str, rows: np.ndarray, made_for: dict) -> None:
  tmp = path + '.tmp'
  with full_disk.writing(path, partial=tmp):
    with open(tmp, 'wb') as f:
      np.savez(f, probabilities=rows, made_for=json.dumps(made_for))
    os.replace(tmp, path)
