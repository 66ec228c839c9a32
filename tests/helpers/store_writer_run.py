"""Writes one process's share of an epoch of a logit store, as a save pass would.

  python tests/helpers/store_writer_run.py STORE EPOCH PROCESS_INDEX PROCESS_COUNT BATCH [STALL_AT]

The rows are ``epoch_rows(...)``, a pure function of the epoch. With STALL_AT = s the
process stops for good just before renaming its chunk number s (counting from 0) into
place, once that chunk's temp file is written and fsynced, and touches
``STORE/stalled`` so that a test can kill it there.
"""
import os
import sys
import time

import numpy as np

import made_up_rows
from tinyvit_jax.distill import store


def epoch_rows(epoch: int, n: int, k: int, num_classes: int):
  """(values, indices, example_index) of every position of ``epoch``."""
  values, indices = made_up_rows.teacher_like_topk(n, k, num_classes, seed=epoch)
  return values, indices, np.random.default_rng(epoch).permutation(n)


def stall_before_rename(path: str, stall_at: int) -> None:
  """From now on, this process stops for good before renaming its chunk number
  ``stall_at`` (counting its chunk renames from 0) and touches ``path/stalled``."""
  renames = [0]
  real_replace = os.replace

  def replace(source, target):
    if target.endswith('.bin'):
      if renames[0] == stall_at:
        open(os.path.join(path, 'stalled'), 'w').close()
        time.sleep(3600)
      renames[0] += 1
    real_replace(source, target)

  os.replace = replace


def main(path, epoch, process_index, process_count, batch, stall_at=None):
  logits = store.LogitStore.open(path)
  if stall_at is not None:
    stall_before_rename(path, int(stall_at))
  columns = epoch_rows(int(epoch), logits.rows_per_epoch, logits.k, logits.num_classes)
  with logits.epoch_writer(int(epoch), int(process_index), int(process_count)) as writer:
    missing = logits.missing_chunks(int(epoch), int(process_index), int(process_count))
    if missing:  # resume at the first incomplete chunk
      batch = int(batch)
      for start in range(logits.chunk_positions(missing[0]).start, writer.positions.stop, batch):
        stop = min(start + batch, writer.positions.stop)
        writer.write(start, *(c[start:stop] for c in columns))


if __name__ == '__main__':
  main(*sys.argv[1:])
