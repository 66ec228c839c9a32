"""Candidate engines for the FPD logit store: write and read rows/s, bytes per row.

  python benchmarks/store_engines.py                 # N = 200k rows at k=10, 3 rounds
  python benchmarks/store_engines.py --rows 20000 --rounds 1   # smoke test

Each engine holds one epoch of N teacher-like rows (``tests/helpers/made_up_rows.py``; 8,192
distinct rows tiled, so no chunk sees a repeat) in chunks of 4,096 rows:

* files-raw: one file per chunk, the three columns as raw bytes (temp, fsync, rename).
* files-encoded: ``distill.store``, i.e. files-raw plus delta/byte-plane/zlib encoding, a
  header and a CRC.
* tensorstore-zarr3: three zarr3 arrays, blosc zstd-1 with byte shuffle, then crc32c.
* array_record: one record per row (what ArrayRecord is built for), zstd-1, groups of
  4,096 records; one file, since ArrayRecord files have a single writer.

Reads: "sequential" reads the epoch in batches of 1,024 rows (a student); "random"
reads one chunk's worth from random chunk starts (a resumed or sampled read). Speeds are
medians over rounds; bytes on disk are file sizes summed (k=10 and k=100, the latter at
N / 4 rows since its teacher rows are slow to make). Wall-clock on a shared machine is
noisy: compare engines within one run.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import tensorstore as ts
from array_record.python import array_record_module

from tinyvit_jax import writes
from tinyvit_jax.distill import store

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests',
                                'helpers'))
import made_up_rows  # pylint: disable=wrong-import-position

CHUNK = 4096
BATCH = 1024


def make_rows(n: int, k: int, num_classes: int):
  distinct = min(n, 8192)
  values, indices = made_up_rows.teacher_like_topk(distinct, k, num_classes)
  tile = -(-n // distinct)
  return (np.tile(values,
                  (tile, 1))[:n], np.tile(indices,
                                          (tile, 1))[:n].astype(store.index_dtype(num_classes)),
          np.random.default_rng(1).permutation(n).astype(np.uint32))


class FilesRaw:
  name = 'files-raw'

  def __init__(self, path, n, k, num_classes):
    self.path, self.n, self.k, self.dtype = path, n, k, store.index_dtype(num_classes)
    os.makedirs(path)

  def write(self, start, values, indices, example):
    path = os.path.join(self.path, f'{start // CHUNK:06d}')
    with writes.replacing(path) as tmp, open(tmp, 'wb') as f:
      f.write(values.tobytes() + indices.tobytes() + example.tobytes())

  def read(self, start, count):
    pieces = []
    for chunk in range(start // CHUNK, -(-(start + count) // CHUNK)):
      with open(os.path.join(self.path, f'{chunk:06d}'), 'rb') as f:
        data = np.frombuffer(f.read(), np.uint8)
      rows = min(CHUNK, self.n - chunk * CHUNK)
      ends = np.cumsum([rows * self.k * 2, rows * self.k * self.dtype.itemsize])
      columns = (data[:ends[0]].view(np.float16).reshape(rows, self.k),
                 data[ends[0]:ends[1]].view(self.dtype).reshape(rows, self.k),
                 data[ends[1]:].view(np.uint32))
      lo = max(start - chunk * CHUNK, 0)
      pieces.append([c[lo:start + count - chunk * CHUNK] for c in columns])
    return [np.concatenate(c) for c in zip(*pieces)]


class FilesEncoded:
  name = 'files-encoded'

  def __init__(self, path, n, k, num_classes):
    meta = dict(dataset_name='bench', dataset_size=n, dataset_fingerprint='', seed=0,
                augmentation={}, repeats=dict(count=1, stride=64), views_per_example=0, k=k,
                num_classes=num_classes, teacher_name='', teacher_checkpoint_hash='')
    self.store = store.LogitStore.create(path, meta, chunk_rows=CHUNK)
    self.writer = self.store.epoch_writer(0)

  def write(self, start, values, indices, example):
    self.writer.write(start, values, indices, example)

  def finish(self):
    self.store.mark_epoch_done(0)

  def read(self, start, count):
    return self.store.read(0, start, count)


class TensorstoreZarr3:
  name = 'tensorstore-zarr3'

  def __init__(self, path, n, k, num_classes):
    context = ts.Context({'cache_pool': {'total_bytes_limit': 1 << 20}})  # a few chunks
    self.arrays = [
        self._open(os.path.join(path, name), shape, dt, context)
        for name, shape, dt in (('values', [n, k], 'float16'),
                                ('indices', [n, k],
                                 store.index_dtype(num_classes).name), ('example', [n], 'uint32'))
    ]

  @staticmethod
  def _open(path, shape, dtype, context):
    blosc = dict(cname='zstd', clevel=1, shuffle='shuffle', typesize=np.dtype(dtype).itemsize,
                 blocksize=0)
    metadata = dict(
        shape=shape, data_type=dtype,
        chunk_grid=dict(name='regular',
                        configuration=dict(chunk_shape=[CHUNK] + shape[1:])), codecs=[
                            dict(name='bytes', configuration=dict(endian='little')),
                            dict(name='blosc', configuration=blosc),
                            dict(name='crc32c')
                        ])
    return ts.open(
        dict(driver='zarr3', kvstore=dict(driver='file', path=path), metadata=metadata,
             create=True), context=context).result()

  def write(self, start, values, indices, example):
    futures = [
        a[start:start + len(values)].write(c)
        for a, c in zip(self.arrays, (values, indices, example))
    ]
    for future in futures:
      future.result()

  def read(self, start, count):
    futures = [a[start:start + count].read() for a in self.arrays]
    return [f.result() for f in futures]


class ArrayRecordRows:
  name = 'array_record'

  def __init__(self, path, n, k, num_classes):
    os.makedirs(path)
    self.path, self.k = os.path.join(path, 'epoch.ar'), k
    self.dtype = store.index_dtype(num_classes)
    self.writer = array_record_module.ArrayRecordWriter(self.path, f'group_size:{CHUNK},zstd:1')

  def write(self, start, values, indices, example):
    for row in zip(values, indices, example):
      self.writer.write(b''.join(c.tobytes() for c in row))

  def finish(self):
    self.writer.close()
    self.reader = array_record_module.ArrayRecordReader(self.path)

  def read(self, start, count):
    data = np.frombuffer(b''.join(self.reader.read(start, start + count)), np.uint8)
    rows = data.reshape(count, -1)
    split = self.k * 2
    return (rows[:, :split].copy().view(np.float16),
            rows[:, split:split + self.k * self.dtype.itemsize].copy().view(self.dtype),
            rows[:, -4:].copy().view(np.uint32)[:, 0])


ENGINES = (FilesRaw, FilesEncoded, TensorstoreZarr3, ArrayRecordRows)


def disk_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def run_engine(engine, path, columns, num_classes, measure_reads=True):
  """(write rows/s, sequential read rows/s, random read rows/s, bytes/row)."""
  n, k = columns[1].shape
  target = engine(path, n, k, num_classes)
  began = time.perf_counter()
  for start in range(0, n, CHUNK):
    target.write(start, *(c[start:start + CHUNK] for c in columns))
  getattr(target, 'finish', lambda: None)()
  write = n / (time.perf_counter() - began)
  size = disk_bytes(path) / n
  if not measure_reads:
    return None, None, None, size
  began = time.perf_counter()
  for start in range(0, n, BATCH):
    got = target.read(start, min(BATCH, n - start))
  sequential = n / (time.perf_counter() - began)
  assert np.array_equal(got[2], columns[2][start:]), engine.name  # read back what was written
  starts = np.random.default_rng(0).integers(0, n // CHUNK, 50) * CHUNK
  began = time.perf_counter()
  for start in starts:
    target.read(int(start), CHUNK)
  random_reads = len(starts) * CHUNK / (time.perf_counter() - began)
  return write, sequential, random_reads, size


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rows', type=int, default=200_000)
  parser.add_argument('--rounds', type=int, default=3)
  args = parser.parse_args()
  small = make_rows(args.rows, 10, 1000)
  large = make_rows(args.rows // 4, 100, 21841)
  results = {engine.name: [] for engine in ENGINES}
  root = tempfile.mkdtemp(prefix='store_engines_')
  try:
    for round_index in range(args.rounds):
      for engine in ENGINES:  # alternate engines in every round, so noise hits all alike
        path = os.path.join(root, f'{engine.name}_{round_index}')
        results[engine.name].append(run_engine(engine, path, small, 1000))
        shutil.rmtree(path)
    sizes_k100 = {}
    for engine in ENGINES:
      path = os.path.join(root, f'{engine.name}_k100')
      sizes_k100[engine.name] = run_engine(engine, path, large, 21841, measure_reads=False)[3]
  finally:
    shutil.rmtree(root)
  print(f'N = {args.rows} rows, chunks of {CHUNK}, read batches of {BATCH}, medians of '
        f'{args.rounds}; official bytes per sample-epoch: 44 (k=10), 404 (k=100) plus ~15 '
        'of key files')
  print(f'{"engine":<18} {"k=10 B/row":>10} {"write/s":>9} {"seq read/s":>11} '
        f'{"random/s":>9} {"k=100 B/row":>11}')
  for name, runs in results.items():
    write, sequential, random_reads, size = (statistics.median(v) for v in zip(*runs))
    print(f'{name:<18} {size:>10.1f} {write / 1e6:>8.2f}M {sequential / 1e6:>10.2f}M '
          f'{random_reads / 1e6:>8.2f}M {sizes_k100[name]:>11.1f}')


if __name__ == '__main__':
  main()
