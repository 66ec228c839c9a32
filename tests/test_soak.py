"""A long run holds steady (#19 item 6): the quickstart's FPD student for 1,432 steps
(8 epochs at batch 8), fed by 2 grain workers from a logit store of made-up rows, with
an eval every epoch and a checkpoint every 200 steps. Losses are fetched every 5 steps:
the step metrics awaiting a fetch are live arrays too, and at 25 their rise and fall
alone moved the median by 5%. A thread samples the run's process
tree: host RSS, open file descriptors, the shared memory it maps (grain hands batches over
in /dev/shm), JAX's live arrays and the workdir's bytes on disk, each tagged with the last
logged step.

The warm-up (compiles, worker start, first evals and checkpoints) is the first quarter of
the steps. Each figure is the median of its samples (for the counts, their lowest level:
their in-flight part swings by tens) over the second quarter and over the last fifth, so a
batch or a save in flight does not count, and a leak, which raises the level, does. A count
under half its window's median is not a level: sampled while a step has donated its state
and not yet returned the new one, it sees neither. The later level may not exceed the
earlier one by more than 5% (memory), 15% (disk: the two checkpoints kept are most of it,
and orbax compresses them, so their size drifts with the weights, 6.1 to 6.5 MB within one
run; one more checkpoint left behind adds half) or 2 (the counts: between the two windows
~4 evals and ~4 checkpoints pass, so one descriptor or array left behind by each shows).
"""
import contextlib
import json
import os
import statistics
import threading

import jax
import psutil
import pytest

from configs import quickstart
import made_up_rows
from tinyvit_jax import main
from tinyvit_jax.data import order
from tinyvit_jax.data import sources
from tinyvit_jax.distill import manifest
from tinyvit_jax.distill import store
from tinyvit_jax.train import metrics

EPOCHS, BATCH, WORKERS, GROWTH, DISK_GROWTH, MORE = 8, 8, 2, 1.05, 1.15, 2
STEPS = EPOCHS * (1438 // BATCH)


def made_up_store(config, path: str) -> None:
  """Every epoch of the run's store, with teacher-like rows (no teacher needed)."""
  source = sources.from_config(config.data, 'train')
  fields = manifest.store_fields(source, dataset_name=config.data.source, aug_config=config.aug,
                                 seed=config.seed, k=config.distill.k,
                                 num_classes=config.num_classes,
                                 repeats=order.repeats_of(config.data))
  logits = store.LogitStore.create(
      path, dict(fields, teacher_name='made_up', teacher_checkpoint_hash='0'))
  n = logits.rows_per_epoch
  for epoch in range(EPOCHS):
    values, indices = made_up_rows.teacher_like_topk(n, config.distill.k, config.num_classes,
                                                     seed=epoch)
    with logits.epoch_writer(epoch) as writer:
      writer.write(0, values, indices, order.epoch_permutation(config.seed, epoch, n))
    logits.mark_epoch_done(epoch)


def disk_bytes(directory: str) -> int:
  """The bytes of every file under ``directory``."""
  total = 0
  for folder, _, names in os.walk(directory):
    for name in names:
      with contextlib.suppress(FileNotFoundError):  # a checkpoint being replaced
        total += os.path.getsize(os.path.join(folder, name))
  return total


def shared_memory_bytes(pid: int) -> set:
  """(path, mapped bytes) of each /dev/shm file the process maps."""
  found = set()
  with open(f'/proc/{pid}/maps') as f:
    for line in f:
      fields = line.split()
      if len(fields) >= 6 and fields[5].startswith('/dev/shm/'):
        start, end = (int(edge, 16) for edge in fields[0].split('-'))
        found.add((fields[5], end - start))
  return found


class Sampler(threading.Thread):
  """Samples this process and its children (grain's workers) until ``done`` is set."""

  def __init__(self, workdir: str):
    super().__init__(daemon=True)
    self.workdir, self.samples, self.done = workdir, [], threading.Event()

  def logged_step(self) -> int:
    if not os.path.exists(os.path.join(self.workdir, metrics.METRICS_FILE)):
      return 0
    rows = metrics.read_metrics(self.workdir)
    return rows[-1]['step'] if rows else 0

  def run(self):
    me = psutil.Process()
    while not self.done.wait(0.25):
      rss = fds = 0
      shm = set()
      for process in [me, *me.children(recursive=True)]:
        try:
          rss += process.memory_info().rss
          fds += process.num_fds()
          shm |= shared_memory_bytes(process.pid)
        except (psutil.NoSuchProcess, FileNotFoundError):  # a worker that just ended
          continue
      self.samples.append(
          dict(step=self.logged_step(), rss=rss, fds=fds, shm_bytes=sum(size for _, size in shm),
               live_arrays=len(jax.live_arrays()), disk=disk_bytes(self.workdir)))


def floor(counts: list) -> int:
  """The lowest count that is a level, not a donated state's gap (module docstring)."""
  middle = statistics.median(counts)
  return min(count for count in counts if count >= middle / 2)


@pytest.mark.slow
def test_a_long_run_holds_its_memory_files_shared_memory_and_disk(tmp_path):
  config = quickstart.student_config(runlocal=True)
  config.distill.update(kind='fpd', from_store=True, k=3, store=str(tmp_path / 'logits'))
  config.update(epochs=EPOCHS, batch_size=BATCH, checkpoint_every_steps=200, log_every_steps=5,
                stages=('train',))
  config.data.num_workers = WORKERS
  made_up_store(config, config.distill.store)
  workdir = str(tmp_path / 'run')
  sampler = Sampler(workdir)
  sampler.start()
  try:
    main.run_stages(config, workdir, None)
  finally:
    sampler.done.set()
    sampler.join()
  with open(os.path.join(workdir, 'stages.json')) as f:
    assert json.load(f)['train']['steps'] == STEPS
  settled = [s for s in sampler.samples if STEPS // 4 <= s['step'] < STEPS // 2]
  last = [s for s in sampler.samples if s['step'] >= STEPS * 4 // 5 and s['step'] < STEPS]
  assert len(settled) >= 10 and len(last) >= 10, 'too few samples to tell'
  assert min(s['shm_bytes'] for s in settled) > 0, 'the workers handed over no shared memory'
  for name in ('rss', 'fds', 'shm_bytes', 'live_arrays', 'disk'):
    # A count's in-flight part (a step's metrics awaiting their fetch, a batch being
    # handed over) swings it by tens between samples; what a leak raises is its floor.
    level = floor if name in ('fds', 'live_arrays') else statistics.median
    before = level([s[name] for s in settled])
    after = level([s[name] for s in last])
    limit = (before + MORE if name in ('fds', 'live_arrays') else DISK_GROWTH
             * before if name == 'disk' else GROWTH * before)
    assert after <= limit, (name, before, after, [s[name] for s in last])
