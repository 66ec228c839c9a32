"""Checks a logit store against its teacher, and fails below thresholds.

  python -m tinyvit_jax.distill.verify --store DIR --teacher CKPT_DIR --dataset digits \\
      --dataset_arg split=train --dataset_arg image_size=32 [--sample 256]

First reads every chunk of the done epochs and lists each missing or damaged one. Then
re-runs the teacher on a random sample of stored rows, regenerating each row's image
from the manifest's seed and augmentation exactly as the save pass made it (a Mixup
pair is rebuilt whole), and compares: the top-1 agreement (the stored top-1 class is the
live argmax) and the mean |Δp| over the stored top-k (stored value against the live
probability of that class). The official code only logs such figures; here a store
below ``min_top1_agreement`` or above ``max_mean_abs_diff`` is an error. The defaults
allow float16 rounding (≤ 2^-11 relative) and little else.
"""
import argparse
import json
import sys

import jax
import numpy as np

from tinyvit_jax import errors
from tinyvit_jax.data import augment
from tinyvit_jax.data import loader
from tinyvit_jax.data import order
from tinyvit_jax.data import sources
from tinyvit_jax.distill import manifest
from tinyvit_jax.distill import save_pass
from tinyvit_jax.distill import store
from tinyvit_jax.distill.teachers import jax_teacher


class VerificationError(errors.UserError, ValueError):
  """The store cannot be checked against this teacher, or disagrees with it beyond the
  thresholds."""


def verify(store_path: str, teacher, source, *, sample: int = 256, seed: int = 0,
           min_top1_agreement: float = 0.99, max_mean_abs_diff: float = 1e-3, batch: int = 32,
           mesh=None, log=print) -> dict:
  """Checks every chunk's checksum (``VerificationError`` lists each damaged one), then
  compares ``sample`` random stored rows (of the done epochs; ``seed`` picks them) with
  ``teacher`` on their regenerated images; returns the figures, raises
  ``VerificationError`` below the thresholds. ``source`` must be the saved dataset.
  ``batch`` (even) rows run at once over the devices of ``mesh`` (default: all local)."""
  logits = store.LogitStore.open(store_path)
  damaged = logits.damaged_chunks()
  if damaged:
    raise VerificationError(f'The logit store at {store_path} has {len(damaged)} unusable '
                            'chunks: ' + '; '.join(damaged))
  meta = logits.manifest
  logits.check_compatible(
      manifest.store_fields(source, dataset_name=meta['dataset_name'],
                            aug_config=meta['augmentation'], seed=meta['seed'], k=logits.k,
                            num_classes=logits.num_classes))
  if teacher.num_classes != logits.num_classes:
    raise VerificationError(f'The teacher has {teacher.num_classes} classes, the store '
                            f'{logits.num_classes}: it cannot be the teacher of this store.')
  if not logits.epochs_done:
    raise VerificationError(f'{store_path} has no complete epoch to verify.')
  if (teacher.name, teacher.checkpoint_hash) != (meta['teacher_name'],
                                                 meta['teacher_checkpoint_hash']):
    log(f'note: the store was saved by {meta["teacher_name"]} '
        f'{meta["teacher_checkpoint_hash"][:12]}, this is {teacher.name} '
        f'{teacher.checkpoint_hash[:12]}')
  view = save_pass.make_teacher_view(teacher, meta['augmentation'], mesh=save_pass.local_mesh(mesh),
                                     batch=batch, source_classes=source.num_classes)
  host = augment.make_train_augment(meta['augmentation']).host
  stored_top1, live_top1, diffs = [], [], []
  for epoch, positions in _sampled_rows(logits, sample, seed).items():
    for host_batch in loader.position_batches(
        source, seed=meta['seed'], epoch=epoch, batch=batch, transform=host,
        positions=_with_pairs(positions,
                              logits.rows_per_epoch), repeats=order.Repeats(**meta['repeats'])):
      live = np.asarray(jax.device_get(view(host_batch)))
      for row, position in enumerate(host_batch['position']):
        if not host_batch['mask'][row] or position not in positions:
          continue
        positions.discard(position)  # a lone last position appears twice: count it once
        values, indices, _ = logits.read(epoch, int(position), 1)
        stored_top1.append(indices[0, 0])
        live_top1.append(np.argmax(live[row]))
        diffs.append(np.abs(values[0].astype(np.float32) - live[row][indices[0]]))
  figures = dict(rows=len(stored_top1),
                 top1_agreement=float(np.mean(np.equal(stored_top1, live_top1))),
                 mean_abs_diff=float(np.mean(diffs)))
  log(f'verify {store_path}: {figures["rows"]} rows, top-1 agreement '
      f'{figures["top1_agreement"]:.4f} (min {min_top1_agreement}), mean |dp| over the '
      f'top-{logits.k} {figures["mean_abs_diff"]:.2e} (max {max_mean_abs_diff:g})')
  if (figures['top1_agreement'] < min_top1_agreement
      or figures['mean_abs_diff'] > max_mean_abs_diff):
    raise VerificationError(
        f'The logit store at {store_path} disagrees with the teacher {teacher.name}: top-1 '
        f'agreement {figures["top1_agreement"]:.4f} (min {min_top1_agreement}), mean |dp| '
        f'{figures["mean_abs_diff"]:.2e} (max {max_mean_abs_diff:g}) over '
        f'{figures["rows"]} rows.')
  return figures


def _sampled_rows(logits: store.LogitStore, sample: int, seed: int) -> dict:
  """{epoch: set of positions}: ``sample`` distinct (epoch, position)s of done epochs."""
  epochs, n = sorted(logits.epochs_done), logits.rows_per_epoch
  picks = np.random.default_rng(seed).choice(
      len(epochs) * n, min(sample,
                           len(epochs) * n), replace=False)
  rows = {}
  for pick in sorted(picks):
    rows.setdefault(epochs[pick // n], set()).add(int(pick % n))
  return rows


def _with_pairs(positions: set, n: int) -> np.ndarray:
  """The Mixup pairs (2j, 2j + 1) holding ``positions``, adjacent; a lone last position
  (n odd) pairs with itself, as the save pass's padding did."""
  starts = sorted({p - p % 2 for p in positions})
  return np.array([[s, min(s + 1, n - 1)] for s in starts]).reshape(-1)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--store', required=True, help='logit store directory')
  parser.add_argument('--teacher', required=True, help='teacher checkpoint directory')
  parser.add_argument('--dataset', required=True, help='data source name (data.sources)')
  parser.add_argument('--dataset_arg', action='append', default=[],
                      help='NAME=VALUE for the source constructor, e.g. split=train')
  parser.add_argument('--sample', type=int, default=256)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--min_top1_agreement', type=float, default=0.99)
  parser.add_argument('--max_mean_abs_diff', type=float, default=1e-3)
  args = parser.parse_args(argv)
  try:
    source = sources.make_source(args.dataset, **dict(_argument(a) for a in args.dataset_arg))
    verify(args.store, jax_teacher.from_checkpoint(args.teacher), source, sample=args.sample,
           seed=args.seed, batch=args.batch, min_top1_agreement=args.min_top1_agreement,
           max_mean_abs_diff=args.max_mean_abs_diff)
  except errors.UserError as error:
    sys.exit(errors.refuse(error))


def _argument(text: str) -> tuple:
  name, _, value = text.partition('=')
  try:
    return name, json.loads(value)
  except json.JSONDecodeError:
    return name, value


if __name__ == '__main__':
  main()
