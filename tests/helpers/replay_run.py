"""One replay run: the augmented images and mixed targets a pipeline gives, by example.

``test_data_replay`` calls ``augmented`` in its own process and runs this file as a script
in fresh interpreters, with simulated devices (XLA_FLAGS) or as one of several JAX
processes (``--coordinator``), which write what they see to an .npz.
"""
import argparse

import jax
import numpy as np

from tinyvit_jax.data import order
from tinyvit_jax.data import pipeline
from tinyvit_jax.data.sources import synthetic

SEED, N, CLASSES = 7, 128, 10
# The whole recipe, colour jitter included, at 32x32 so a run takes seconds.
AUG = dict(image_size=32, color_jitter=0.4)
# Where the per-image ops run: each is replayed on its own (their erasing noise differs).
AUGMENT_ON = ('device', 'host')
# Repeated augmentation as DeiT runs it (3 views), at a stride that fits these batches.
REPEATED = order.Repeats(3, 8)


def source():
  return synthetic.SyntheticSource(N, num_classes=CLASSES, image_size=40)


def local_rows(array) -> np.ndarray:
  """This process's rows of a global array, in order."""
  shards = sorted(array.addressable_shards, key=lambda shard: shard.index[0].start)
  return np.concatenate([np.asarray(shard.data) for shard in shards])


def augmented(global_batch: int, spans, augment_on: str = 'device', num_workers: int = 0,
              repeats: order.Repeats = order.Repeats()) -> dict:
  """{(epoch, index, repeat): (image, target)} over ``spans``: (start step, number of
  steps), the host ops run in ``num_workers`` loader processes (0: this one)."""
  seen = {}
  aug = dict(AUG, augment_on=augment_on)
  for start_step, num_steps in spans:
    run = pipeline.make_input_pipeline(source(), aug, seed=SEED, global_batch=global_batch,
                                       label_smoothing=0.1, start_step=start_step,
                                       num_steps=num_steps, num_workers=num_workers,
                                       repeats=repeats)
    for batch in run.batches:
      images, targets = run.device_augment(batch)
      rows = zip(local_rows(batch['epoch']), local_rows(batch['index']),
                 local_rows(batch['repeat']), local_rows(images), local_rows(targets))
      seen.update({
          (int(epoch), int(index), int(repeat)): (image, target)
          for epoch, index, repeat, image, target in rows
      })
  return seen


def save(seen: dict, path: str):
  names = sorted(seen)
  np.savez(path, views=np.array(names), images=np.stack([seen[n][0] for n in names]),
           targets=np.stack([seen[n][1] for n in names]))


def load(path: str) -> dict:
  saved = np.load(path)
  return {
      tuple(int(n) for n in view): (
          image, target
      ) for view, image, target in zip(saved['views'], saved['images'], saved['targets'])
  }


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--out', required=True)
  parser.add_argument('--global_batch', type=int, required=True)
  parser.add_argument('--spans', required=True, help='start:steps,... e.g. 0:4,3:1')
  parser.add_argument('--coordinator', help='host:port of process 0, for a multi-process run')
  parser.add_argument('--num_processes', type=int, default=1)
  parser.add_argument('--process_id', type=int, default=0)
  parser.add_argument('--augment_on', choices=AUGMENT_ON, default='device')
  parser.add_argument('--repeated', type=int, default=0, help='1: with REPEATED')
  args = parser.parse_args()
  if args.coordinator:
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  spans = [tuple(int(n) for n in span.split(':')) for span in args.spans.split(',')]
  repeats = REPEATED if args.repeated else order.Repeats()
  save(augmented(args.global_batch, spans, args.augment_on, repeats=repeats), args.out)


if __name__ == '__main__':
  main()
