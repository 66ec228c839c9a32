"""The loader replays the same (epoch, position, index, key) stream however it is run."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tinyvit_jax.data import keys
from tinyvit_jax.data import loader
from tinyvit_jax.data import pipeline
from tinyvit_jax.data.sources import synthetic

SEED = 11
N = 256  # divisible by both batch sizes, so both see the same examples every epoch


def key_of(record, key_data):
  """A transform that shows which key each example got (module-level: workers pickle it),
  beside the one the loader puts in the batch."""
  return dict(image=record['image'], key_seen=key_data)


def rows_of(batch) -> list[tuple]:
  """(epoch, position, index, key word 0, key word 1) of each example, in batch order."""
  columns = [batch[name].tolist() for name in ('epoch', 'position', 'index')]
  return list(zip(*columns, *batch['key'].T.tolist()))


def run_processes(global_batch, process_count, num_steps, **kwargs):
  """The global stream of ``process_count`` simulated hosts, their slices side by side."""
  source = synthetic.SyntheticSource(N, num_classes=4, image_size=8)
  hosts = [
      loader.train_batches(source, seed=SEED, global_batch=global_batch, transform=key_of,
                           process_index=k, process_count=process_count, num_steps=num_steps,
                           **kwargs) for k in range(process_count)
  ]
  rows = []
  for step_batches in zip(*hosts):  # one batch from every host per step
    for batch in step_batches:
      rows += rows_of(batch)
  return rows


def test_keys_and_labels_belong_to_the_dataset_index():
  source = synthetic.SyntheticSource(N, num_classes=4, image_size=8)
  batch = next(
      loader.train_batches(source, seed=SEED, global_batch=8, transform=key_of, start_step=40))
  assert batch['epoch'].tolist() == [1] * 8 and batch['position'].tolist() == list(range(64, 72))
  np.testing.assert_array_equal(batch['key'], batch['key_seen'])  # the transform's key
  for index, key, label, image in zip(batch['index'], batch['key'], batch['label'], batch['image']):
    expected = jax.random.key_data(keys.sample_key(SEED, 1, int(index)))
    assert key.dtype == np.uint32 and np.array_equal(key, expected)
    assert label == source[int(index)]['label']
    assert np.array_equal(image, source[int(index)]['image'])


def test_batch_8_on_one_host_equals_batch_64_on_two_hosts():
  one_host = run_processes(global_batch=8, process_count=1, num_steps=2 * N // 8)
  two_hosts = run_processes(global_batch=64, process_count=2, num_steps=2 * N // 64)
  assert len(one_host) == 2 * N and one_host == two_hosts
  assert {row[0] for row in one_host} == {0, 1}


def test_resuming_mid_epoch_continues_the_stream():
  straight = run_processes(global_batch=8, process_count=1, num_steps=40)
  resumed = run_processes(global_batch=8, process_count=1, num_steps=15, start_step=25)
  assert resumed == straight[25 * 8:]


def run_elsewhere(**kwargs):
  """``run_processes(**kwargs)`` in a fresh interpreter: (its rows, its stderr)."""
  code = f'import json, test_data_loader as t; print(json.dumps(t.run_processes(**{kwargs!r})))'
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(__file__))
  return [tuple(row) for row in json.loads(result.stdout)], result.stderr


def test_a_separate_process_sees_the_same_stream():
  elsewhere, _ = run_elsewhere(global_batch=8, process_count=1, num_steps=36)
  assert elsewhere == run_processes(global_batch=8, process_count=1, num_steps=36)


def test_worker_processes_give_the_same_batches_and_exit_quietly():
  in_workers, stderr = run_elsewhere(global_batch=16, process_count=2, num_steps=20, num_workers=2)
  assert in_workers == run_processes(global_batch=16, process_count=2, num_steps=20)
  # Batches are copied out of shared memory, so none is torn down noisily at exit. (A
  # rare grain race at close can still leave one block for Python's resource tracker,
  # which frees it with a 'leaked shared_memory' warning: grain issue #1031.)
  assert 'Exception ignored' not in stderr, stderr


def test_eval_reads_every_example_once_in_order_with_a_mask():
  source = synthetic.SyntheticSource(21, num_classes=4, image_size=8)
  batches = list(loader.eval_batches(source, global_batch=8))
  assert len(batches) == 3 and all(b['image'].shape == (8, 8, 8, 3) for b in batches)
  index = np.concatenate([b['index'] for b in batches])
  mask = np.concatenate([b['mask'] for b in batches])
  assert index[mask].tolist() == list(range(21)) and mask.sum() == 21


def test_errors_surface_when_the_loader_is_made():
  with pytest.raises(ValueError, match=r'dataset is empty \(0 examples\)'):
    loader.train_batches(synthetic.SyntheticSource(0), seed=0, global_batch=8)
  source = synthetic.SyntheticSource(30)
  with pytest.raises(ValueError, match='has 30 examples, fewer than one global batch of 64'):
    loader.train_batches(source, seed=0, global_batch=64)
  with pytest.raises(ValueError, match='global batch 12 does not split over 8 processes'):
    loader.train_batches(source, seed=0, global_batch=12, process_count=8)
  with pytest.raises(ValueError, match=r'dataset is empty \(0 examples\)'):
    loader.eval_batches(synthetic.SyntheticSource(0), global_batch=8)


def test_prefetch_keeps_the_order_and_pulls_ahead():
  pulled = []

  def counting():
    for i in range(5):
      pulled.append(i)
      yield i

  items = pipeline.prefetch(counting(), 2)
  assert next(items) == 0 and pulled == [0, 1, 2]  # 1 and 2 are on their way meanwhile
  assert list(items) == [1, 2, 3, 4]
  assert list(pipeline.prefetch(iter([]), 2)) == []


def test_prefetch_raises_an_error_read_ahead_where_its_item_would_come():

  def failing_at_3():
    yield from range(3)
    raise ValueError('item 3 is unreadable')

  items = pipeline.prefetch(failing_at_3(), 2)
  assert [next(items) for _ in range(3)] == [0, 1, 2]  # the error was met while fetching 1
  with pytest.raises(ValueError, match='item 3 is unreadable'):
    next(items)
