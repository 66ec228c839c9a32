"""A small FPD save pass for the tests: data, augmentation, a linear teacher, and a script.

  python tests/helpers/save_pass_run.py --store DIR [--global_batch 32] [--stall_at S]
      [--coordinator HOST:PORT --num_processes P --process_id I]
  python tests/helpers/save_pass_run.py --store DIR --read_out ROWS.npz --global_batch 64 ...

The teacher is a fixed random linear map of 4x4-pooled pixels, so it is fast, sees every
pixel the augmentation changes (Mixup and CutMix included) and gives peaked, non-trivial
softmaxes. With ``--stall_at S`` the run stops for good just before renaming its chunk
number S into place (temp file written and fsynced) and touches ``DIR/stalled``, so a test
can SIGKILL it there.
"""
import argparse
import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from store_writer_run import stall_before_rename
from tinyvit_jax.data import pipeline
from tinyvit_jax.data.sources import synthetic
from tinyvit_jax.distill import manifest
from tinyvit_jax.distill import save_pass
from tinyvit_jax.distill import student
from tinyvit_jax.distill.teachers import record

SEED, N, EPOCHS, K, CLASSES, CHUNK_ROWS = 5, 150, 2, 5, 12, 32
# The whole recipe (RandAugment, erasing, Mixup/CutMix pairs) at 32x32, the per-image
# ops on the host (PIL), which compiles in a fraction of the device path's time.
AUG = dict(image_size=32, augment_on='host')
N_SOURCE_CLASSES = 10


def source(n: int = N, seed: int = 0):
  return synthetic.SyntheticSource(n, num_classes=N_SOURCE_CLASSES, image_size=40, seed=seed)


def linear_teacher(seed: int = 0, num_classes: int = CLASSES, nan_at_call=None):
  """A teacher whose probabilities are softmax(pool(images) @ W). With ``nan_at_call``
  = c, its c-th call (counting from 0) returns NaN for the batch's first row."""
  weights = np.random.default_rng(seed).standard_normal((8 * 8 * 3, num_classes)) * 0.1
  weights = jnp.asarray(weights, jnp.float32)
  calls = [0]

  @jax.jit
  def forward(images):
    pooled = images.reshape(len(images), 8, 4, 8, 4, 3).mean(axis=(2, 4))
    return jax.nn.softmax(pooled.reshape(len(images), -1) @ weights, axis=-1)

  def probabilities(images):
    probs = forward(images)
    if calls[0] == nan_at_call:
      probs = probs.at[0, 0].set(jnp.nan)
    calls[0] += 1
    return probs

  digest = hashlib.sha256(np.asarray(weights).tobytes()).hexdigest()
  return record.Teacher(f'linear{seed}', digest, num_classes, probabilities)


def save(store_path: str, global_batch: int = 32, teacher=None, **overrides):
  args = dict(dataset_name='synthetic', aug_config=AUG, seed=SEED, epochs=EPOCHS, k=K,
              store_path=store_path, global_batch=global_batch, progress=False,
              chunk_rows=CHUNK_ROWS)
  args.update(overrides)
  return save_pass.save_logits(teacher or linear_teacher(), args.pop('source', source()), **args)


def student_fields(**overrides):
  args = dict(dataset_name='synthetic', aug_config=AUG, seed=SEED, k=K, num_classes=CLASSES)
  args.update(overrides)
  return manifest.store_fields(args.pop('source', source()), **args)


def local_rows(array) -> np.ndarray:
  """This process's rows of a global array, in order."""
  shards = sorted(array.addressable_shards, key=lambda shard: shard.index[0].start)
  return np.concatenate([np.asarray(shard.data) for shard in shards])


def student_rows(store_path: str, global_batch: int, start_step: int, num_steps: int) -> dict:
  """{(epoch, position): (index, teacher values, teacher indices)} a store-fed student's
  batches carry, on however many devices this process has."""
  hook = student.StoreTargets(store_path, student_fields())
  steps = pipeline.make_input_pipeline(source(), AUG, seed=SEED, global_batch=global_batch,
                                       host_hook=hook, start_step=start_step, num_steps=num_steps)
  seen = {}
  for batch in steps.batches:
    columns = [
        local_rows(batch[name])
        for name in ('epoch', 'position', 'index', 'teacher_values', 'teacher_indices')
    ]
    seen.update({(int(e), int(p)): (int(i), v, t) for e, p, i, v, t in zip(*columns)})
  return seen


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--store', required=True)
  parser.add_argument('--global_batch', type=int, default=32)
  parser.add_argument('--stall_at', type=int)
  parser.add_argument(
      '--read_out', help='read the store as a student at --global_batch '
      'for --num_steps steps from --start_step, and save the rows (.npz)')
  parser.add_argument('--start_step', type=int, default=0)
  parser.add_argument('--num_steps', type=int, default=4)
  parser.add_argument('--coordinator')
  parser.add_argument('--num_processes', type=int, default=1)
  parser.add_argument('--process_id', type=int, default=0)
  args = parser.parse_args()
  if args.coordinator:
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  if args.read_out:
    seen = student_rows(args.store, args.global_batch, args.start_step, args.num_steps)
    names = sorted(seen)
    np.savez(args.read_out, epoch_position=np.array(names),
             index=np.array([seen[n][0] for n in names]),
             values=np.stack([seen[n][1] for n in names]),
             indices=np.stack([seen[n][2] for n in names]))
    return
  if args.stall_at is not None:
    stall_before_rename(args.store, args.stall_at)
  save(args.store, args.global_batch)


if __name__ == '__main__':
  main()
