"""main.run_stages without a model, for the benchmark scripts' tests: a real run of a
recipe of many runs takes minutes."""
import json
import os
import time

import numpy as np

import made_up_rows
from tinyvit_jax.data import order
from tinyvit_jax.distill import store

ROWS = 100  # rows per epoch of the stand-in stores


def spend(seconds: float) -> None:
  """Busy for ``seconds`` of CPU time (so wall and CPU time both pass)."""
  end = time.process_time() + seconds
  while time.process_time() < end:
    pass


def fake_stages(config, workdir, mode, *, redo=(), recipe_workdir=None):
  """main.run_stages without a model: a made-up store, a metrics log, a top-1 from the
  run's name; each stage spends a little CPU time, more for the arms that cost more."""
  del mode, redo, recipe_workdir
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, 'stages.json')
  done = {}
  if os.path.exists(path):
    with open(path) as f:
      done = json.load(f)
  for stage in config.stages:
    if stage in done:
      continue
    if stage == 'save_logits':
      spend(0.06)
      logits = store.LogitStore.create(
          store.location(config.distill, workdir),
          dict(dataset_name='digits', dataset_size=ROWS, dataset_fingerprint='f', seed=config.seed,
               augmentation={}, repeats=order.Repeats()._asdict(), views_per_example=0,
               k=config.distill.k, num_classes=10, teacher_name='t', teacher_checkpoint_hash='h'),
          chunk_rows=64)
      for epoch in range(config.epochs):
        values, indices = made_up_rows.teacher_like_topk(ROWS, config.distill.k, 10, epoch)
        with logits.epoch_writer(epoch) as writer:
          writer.write(0, values, indices, np.arange(ROWS))
        logits.mark_epoch_done(epoch)
    elif stage == 'train':
      online = config.distill.kind != 'none' and not config.distill.from_store
      spend(0.04 if online else 0.02)
      with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
        for step, rate in ((10, 100.0), (20, 160.0)):
          f.write(
              json.dumps(dict(step=step, loss=1.0, epoch=step / 5, images_per_second=rate)) + '\n')
    done[stage] = {}
  with open(path, 'w') as f:
    json.dump(done, f)
  return dict(top1=(sum(map(ord, os.path.basename(workdir))) % 97) / 97 if 'eval' in done else None)
