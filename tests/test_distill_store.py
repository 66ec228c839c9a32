"""The logit store: exact round trips, concurrent and killed writers, corruption, refusals, size."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import made_up_rows
import store_writer_run
from tinyvit_jax import writes
from tinyvit_jax.distill import manifest
from tinyvit_jax.distill import store

N, K, C, CHUNK = 2000, 10, 1000, 256  # 8 chunks, the last of 208 rows
WRITER = os.path.join(os.path.dirname(__file__), 'helpers', 'store_writer_run.py')
# Official bytes of key files per sample-epoch: 18 GB of keys beside 481 GB of 404-byte
# values for the 21k release (facts.md), i.e. 18 / 481 * 404 B.
OFFICIAL_KEY_BYTES = 18 / 481 * 404


def make_meta(**changes):
  meta = dict(
      dataset_name='synthetic', dataset_size=N, dataset_fingerprint='abc123', seed=7,
      augmentation=dict(mixup=0.8, rand_augment='rand-m9-mstd0.5-inc1',
                        crop=dict(scale=(0.08, 1.0))), repeats=dict(count=1,
                                                                    stride=64), views_per_example=0,
      k=K, num_classes=C, teacher_name='tiny_vit_21m_224', teacher_checkpoint_hash='f00d')
  meta.update(changes)
  return meta


def write_epoch(path, batch=96):
  """A new store holding epoch 0, written in this process by one writer."""
  logits = store.LogitStore.create(path, make_meta(), chunk_rows=CHUNK)
  columns = store_writer_run.epoch_rows(0, N, K, C)
  with logits.epoch_writer(0) as writer:
    for start in range(0, N, batch):
      writer.write(start, *(c[start:start + batch] for c in columns))
  logits.mark_epoch_done(0)
  return logits, columns


def chunk_files(path, epoch=0):
  return {
      os.path.basename(f): open(f, 'rb').read()
      for f in sorted(glob.glob(os.path.join(path, f'epoch_{epoch:05d}', '*')))
  }


def run_writer(path, process_index, process_count, batch, stall_at=None):
  args = [sys.executable, WRITER, path, '0', str(process_index), str(process_count), str(batch)]
  return subprocess.Popen(args + ([str(stall_at)] if stall_at is not None else []))


@pytest.fixture(scope='module')
def written(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('store'))
  logits, columns = write_epoch(path)
  return store.LogitStore.open(path), columns


def test_round_trip_is_exact_with_column_dtypes(written):
  logits, (values, indices, example_index) = written
  got_values, got_indices, got_examples = logits.read(0, 0, N)

  assert (got_values.dtype, got_indices.dtype, got_examples.dtype) == (np.float16, np.uint16,
                                                                       np.uint32)
  np.testing.assert_array_equal(got_values.view(np.uint16), values.view(np.uint16))
  np.testing.assert_array_equal(got_indices, indices)
  np.testing.assert_array_equal(got_examples, example_index)
  assert logits.manifest['epochs_done'] == [0] and logits.manifest['rows_per_epoch'] == N


@settings(max_examples=60, deadline=None)
@given(st.integers(0, N), st.integers(0, 700))
def test_reads_at_any_offset_and_batch_size_match_the_rows(written, start, count):
  logits, columns = written
  count = min(count, N - start)
  for got, want in zip(logits.read(0, start, count), columns):
    np.testing.assert_array_equal(got, want[start:start + count])


def test_more_than_65535_classes_store_int32_indices(tmp_path):
  logits = store.LogitStore.create(str(tmp_path), make_meta(num_classes=70000, k=3,
                                                            dataset_size=10), chunk_rows=4)
  values = np.tile(np.array([0.5, 0.25, 0.125], np.float16), (10, 1))
  indices = np.tile(np.array([69999, 0, 65536]), (10, 1))
  with logits.epoch_writer(0) as writer:
    writer.write(0, values, indices, np.arange(10))
  logits.mark_epoch_done(0)

  got = logits.read(0, 3, 5)[1]
  assert got.dtype == np.int32 and logits.manifest['index_dtype'] == 'int32'
  np.testing.assert_array_equal(got, indices[3:8])


def test_two_concurrent_processes_write_the_bytes_of_one(tmp_path, written):
  logits, _ = written
  path = str(tmp_path / 'two')
  store.LogitStore.create(path, make_meta(), chunk_rows=CHUNK)
  writers = [run_writer(path, i, 2, batch=100) for i in range(2)]
  assert [w.wait(timeout=60) for w in writers] == [0, 0]
  two = store.LogitStore.open(path)
  two.mark_epoch_done(0)

  assert chunk_files(path) == chunk_files(logits.path)
  for got, want in zip(two.read(0, 0, N), logits.read(0, 0, N)):
    np.testing.assert_array_equal(got, want)


def test_killed_writer_resumes_to_the_bytes_of_an_uninterrupted_one(tmp_path, written):
  logits, _ = written
  path = str(tmp_path / 'killed')
  store.LogitStore.create(path, make_meta(), chunk_rows=CHUNK)
  writer = run_writer(path, 0, 1, batch=64, stall_at=3)
  deadline = time.monotonic() + 60
  while not os.path.exists(os.path.join(path, 'stalled')) and time.monotonic() < deadline:
    time.sleep(0.05)
  writer.send_signal(signal.SIGKILL)
  writer.wait()
  os.remove(os.path.join(path, 'stalled'))

  resumed = store.LogitStore.open(path)
  assert os.path.exists(resumed.chunk_path(0, 3) + '.tmp')  # written whole, never renamed
  assert resumed.missing_chunks(0) == [3, 4, 5, 6, 7]
  with pytest.raises(ValueError, match='epoch 0 is not complete: 5 of 8 chunks'):
    resumed.mark_epoch_done(0)
  before = {
      name: os.stat(os.path.join(path, 'epoch_00000', name)).st_mtime_ns
      for name in chunk_files(path)
      if name.endswith('.bin')
  }

  assert run_writer(path, 0, 1, batch=80).wait(timeout=60) == 0  # another batch size
  resumed.mark_epoch_done(0)

  assert chunk_files(path) == chunk_files(logits.path)  # and so no temp file is left
  for name, mtime in before.items():  # finished chunks were not rewritten
    assert os.stat(os.path.join(path, 'epoch_00000', name)).st_mtime_ns == mtime


def test_resume_with_another_process_count_skips_finished_chunks(tmp_path, written):
  logits, _ = written
  path = str(tmp_path / 'regrouped')
  store.LogitStore.create(path, make_meta(), chunk_rows=CHUNK)
  assert run_writer(path, 1, 2, batch=50).wait(timeout=60) == 0  # chunks 4-7 only
  regrouped = store.LogitStore.open(path)
  assert regrouped.missing_chunks(0, 0, 3) == [0, 1] and regrouped.missing_chunks(0, 2, 3) == []

  for i in range(3):
    assert run_writer(path, i, 3, batch=50).wait(timeout=60) == 0
  regrouped.mark_epoch_done(0)
  assert chunk_files(path) == chunk_files(logits.path)


def test_full_disk_names_the_chunk_leaves_no_temp_file_and_a_rerun_completes(written, small_disk):
  logits, columns = written
  path = os.path.join(small_disk.path, 'store')
  full = store.LogitStore.create(path, make_meta(), chunk_rows=CHUNK)
  with pytest.raises(writes.DiskFull) as error, full.epoch_writer(0) as writer:
    writer.write(0, *(c[:CHUNK] for c in columns))  # chunk 0 fits
    small_disk.fill()
    writer.write(CHUNK, *(c[CHUNK:2 * CHUNK] for c in columns))
  assert str(error.value) == (
      f'no space left writing {full.chunk_path(0, 1)} ({shutil.disk_usage(path).free:,} bytes '
      'free): free space or move --workdir, then rerun the save: it resumes at the first '
      'missing chunk.')
  assert sorted(os.listdir(os.path.dirname(full.chunk_path(0, 0)))) == ['chunk_000000.bin']
  assert full.missing_chunks(0) == list(range(1, 8))

  small_disk.free_up()
  with full.epoch_writer(0) as writer:
    writer.write(0, *columns)
  full.mark_epoch_done(0)
  assert chunk_files(path) == chunk_files(logits.path)


@pytest.mark.parametrize('damage', ['flip a byte', 'truncate'])
def test_damaged_chunk_names_epoch_and_rows(tmp_path, damage):
  logits, _ = write_epoch(str(tmp_path))
  chunk = logits.chunk_path(0, 1)
  data = bytearray(open(chunk, 'rb').read())
  if damage == 'flip a byte':
    data[len(data) // 2] ^= 0x10
  else:
    del data[len(data) // 2:]
  with open(chunk, 'wb') as f:
    f.write(data)

  with pytest.raises(store.CorruptChunkError, match=r'epoch 0, rows \[256, 512\)'):
    logits.read(0, 300, 10)
  np.testing.assert_array_equal(
      logits.read(0, 0, 256)[2],  # other chunks still read
      store_writer_run.epoch_rows(0, N, K, C)[2][:256])
  if damage == 'truncate':
    assert logits.missing_chunks(0) == [1]  # a resumed save would write it again


def test_incomplete_epochs_neither_read_nor_marked_done_and_done_epochs_refuse_writers(tmp_path):
  logits = store.LogitStore.create(str(tmp_path), make_meta(), chunk_rows=CHUNK)
  values, indices, example_index = store_writer_run.epoch_rows(0, N, K, C)
  writer = logits.epoch_writer(0)
  writer.write(0, values[:600], indices[:600], example_index[:600])

  with pytest.raises(ValueError, match=r'chunk 2 has 88 of 256 rows'):
    writer.close()
  with pytest.raises(ValueError, match=r'6 of 8 chunks are missing \(rows \[512, 768\)'):
    logits.mark_epoch_done(0)
  with pytest.raises(ValueError, match='epoch 0 of .* is not complete'):
    logits.read(0, 0, 10)
  writer.write(600, values[600:], indices[600:], example_index[600:])
  writer.close()
  logits.mark_epoch_done(0)
  with pytest.raises(ValueError, match='finished epochs are never rewritten'):
    logits.epoch_writer(0)


def test_writer_refuses_foreign_positions_and_malformed_rows(tmp_path):
  logits = store.LogitStore.create(str(tmp_path), make_meta(), chunk_rows=CHUNK)
  values, indices, example_index = store_writer_run.epoch_rows(0, N, K, C)
  second_half = logits.epoch_writer(0, process_index=1, process_count=2)
  assert second_half.positions == range(1024, N)

  with pytest.raises(ValueError, match=r'rows \[1000, 1100\) are outside .* \[1024, 2000\)'):
    second_half.write(1000, values[:100], indices[:100], example_index[:100])
  with pytest.raises(ValueError, match='sorted descending'):
    second_half.write(1024, values[:4, ::-1], indices[:4], example_index[:4])
  with pytest.raises(ValueError, match=r'class indices must be in \[0, 1000\)'):
    second_half.write(1024, values[:4], indices[:4] + 1000, example_index[:4])


def test_a_store_from_before_repeats_and_bounds_opens_as_a_plain_one(tmp_path, written):
  """Manifests written before ``repeats`` and ``views_per_example`` existed lack them: the
  store still serves a student without repeated augmentation or a bound, rows unchanged,
  and refuses one with either."""
  logits, (values, _, _) = written
  shutil.copytree(logits.path, tmp_path / 'old')
  manifest_path = tmp_path / 'old' / 'manifest.json'
  manifest = json.loads(manifest_path.read_text())
  del manifest['repeats'], manifest['views_per_example']
  manifest_path.write_text(json.dumps(manifest))
  old = store.LogitStore.open(str(tmp_path / 'old'))
  old.check_compatible(make_meta())
  np.testing.assert_array_equal(old.read(0, 0, N)[0].view(np.uint16), values.view(np.uint16))
  with pytest.raises(ValueError, match='repeats.count: store 1, student 3'):
    old.check_compatible(make_meta(repeats=dict(count=3, stride=64)))
  with pytest.raises(ValueError, match='views_per_example: store 0, student 4'):
    old.check_compatible(make_meta(views_per_example=4))


def test_student_with_other_data_or_targets_is_refused_naming_each_field(tmp_path):
  logits = store.LogitStore.create(str(tmp_path), make_meta(), chunk_rows=CHUNK)
  logits.check_compatible(make_meta(teacher_name='another teacher'))  # any teacher will do
  student = make_meta(
      seed=8, dataset_size=1999, k=5,
      augmentation=dict(mixup=0.0, rand_augment='rand-m9-mstd0.5-inc1',
                        crop=dict(scale=[0.08, 1.0])))
  del student['dataset_fingerprint']

  with pytest.raises(ValueError) as error:
    logits.check_compatible(student)
  message = str(error.value)
  for line in [
      'seed: store 7, student 8', 'dataset_size: store 2000, student 1999',
      'k: store 10, student 5', 'augmentation.mixup: store 0.8, student 0.0',
      "dataset_fingerprint: the student does not give it (store: 'abc123')"
  ]:
    assert line in message
  assert 'crop' not in message and 'num_classes' not in message  # tuples equal lists


def test_bad_configs_are_refused(tmp_path):
  with pytest.raises(ValueError, match='k=11 must be between 1 and the class count C=10'):
    store.LogitStore.create(str(tmp_path), make_meta(k=11, num_classes=10))
  with pytest.raises(ValueError, match='chunk_rows=255 must be even'):
    store.LogitStore.create(str(tmp_path), make_meta(), chunk_rows=255)
  with pytest.raises(ValueError, match=r"lacks \['teacher_name'\]"):
    store.LogitStore.create(str(tmp_path), {f: 0 for f in manifest.META_FIELDS[:-2]} |
                            dict(teacher_checkpoint_hash='', k=1, num_classes=2))
  store.LogitStore.create(str(tmp_path), make_meta())
  with pytest.raises(FileExistsError, match='open it to resume'):
    store.LogitStore.create(str(tmp_path), make_meta())
  with pytest.raises(FileNotFoundError, match='holds no logit store'):
    store.LogitStore.open(str(tmp_path / 'nowhere'))


@pytest.mark.parametrize('k, num_classes', [(10, 1000), (100, 21841)])
def test_bytes_per_sample_epoch_beat_official_by_ten_percent(tmp_path, k, num_classes):
  rows = 4096
  values, indices = made_up_rows.teacher_like_topk(rows, k, num_classes, seed=3)
  example_index = np.random.default_rng(0).permutation(1_281_167)[:rows]
  logits = store.LogitStore.create(str(tmp_path),
                                   make_meta(k=k, num_classes=num_classes, dataset_size=1_281_167))
  writer = logits.epoch_writer(0)
  writer.write(0, values, indices, example_index)
  written = os.path.getsize(logits.chunk_path(0, 0)) / rows
  official = 4 + 4 * k

  assert written <= 0.9 * official, (written, official)  # even without official key files
  assert written <= 0.9 * (official + OFFICIAL_KEY_BYTES)
