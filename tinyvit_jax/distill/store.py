"""The FPD logit store: a teacher's sparse top-k probabilities, one row per epoch position.

A store holds the epochs a student trains (one view of every example per epoch), or, when
bounded (``views_per_example`` M), epochs 0..M-1 only, which the student's epochs replay
in a keyed order (``order.stored_epoch``): its size is then set by M, not the schedule.

Layout::

  STORE/manifest.json                       what was stored, and which epochs are done
  STORE/epoch_00003/chunk_000017.bin        rows [17*R, 18*R) of epoch 3 (R = chunk_rows)

Row ``p`` of epoch ``e`` is position ``p`` of that epoch's order (``data.order``), so any
batch size, device count or resume point reads the same rows. A row holds the top-k
softmax probabilities sorted descending (float16), their class indices (uint16 when
C <= 65,535, else int32) and the example index at that position (uint32), which the
student checks against its own order. Every epoch stores all its positions
(``order.epoch_length``: n, or n - n % r under r-fold repeated augmentation, where each
view is a row of its own), not just the ``n // B * B`` that training at batch B uses, so
the store serves every batch size; the cost is at most B - 1 rows per epoch.

Engine: files with our own encoding (delta, byte planes, zlib-1), chosen by ``python
benchmarks/store_engines.py`` against raw columns, tensorstore zarr3 and ArrayRecord
(benchmarks/RESULTS.md, "Store engines"): the smallest of them, well below the official
format's 4 + 4k bytes a row, and read far faster than a student consumes. Plain files
with our own encoding win because, besides size, the properties a save pass needs are
easiest to guarantee on files we write ourselves:

* Atomic chunks. A chunk is encoded whole, written to ``<name>.tmp``, fsynced and
  renamed; only then does its name exist. A SIGKILL leaves at most a temp file, which
  never reads as a chunk and which the next writer of that chunk deletes. (A missing
  zarr chunk reads as the fill value, silently zeros, so zarr would need markers too.)
* Integrity. Each chunk's header holds its epoch, chunk number, row count, k, payload
  length and a CRC-32 of header and payload; any mismatch raises ``CorruptChunkError``
  naming the epoch and the rows.
* Deterministic bytes. A chunk's bytes depend only on its rows, so chunks written by one
  process, several, or a resumed run are byte-identical.

Encoding of a chunk's payload (zlib level 1 of the concatenation): values as the deltas
of their float16 bit patterns along the row (sorted probabilities make them small), then
indices, then example indices, each split into byte planes (byte b of column j of every
row together), which groups the near-constant high bytes.

Writers: process i of P owns the contiguous block of chunks ``owned_chunks(i, P)`` and
writes any positions of it in any order and batch size; a chunk is committed once all of
its rows have arrived, so no chunk is ever shared between processes. Chunk boundaries
are at even positions (``chunk_rows`` is even), so a Mixup pair (2j, 2j + 1) never
straddles two processes. A resumed writer skips chunks already on disk, whatever process
count wrote them: finished chunks are never rewritten.

Completion: once every writer has finished, one process calls ``mark_epoch_done``, which
checks every chunk's CRC and then adds the epoch to the manifest's ``epochs_done``
(written to a temp file and renamed). Only done epochs can be read, and done epochs
refuse writers.
"""
import json
import os
import struct
import zlib

import numpy as np

from tinyvit_jax import errors
from tinyvit_jax import writes
from tinyvit_jax.data import order
from tinyvit_jax.distill.manifest import META_FIELDS, STUDENT_FIELDS

FORMAT_VERSION = 1
# Stores written before repeated augmentation or bounded stores existed lack ``repeats``
# or ``views_per_example``: they are plain, one epoch of rows per epoch trained.
_PLAIN_REPEATS = order.Repeats()._asdict()
DEFAULT_CHUNK_ROWS = 4096

_MANIFEST = 'manifest.json'
_RERUN = 'rerun the save: it resumes at the first missing chunk'  # after a full disk
_MAGIC = b'TVLS'
# magic, format version, epoch, chunk, rows, k, index bytes, payload length; then CRC-32.
_HEADER = struct.Struct('<4sHIIIIHQ')
_CRC = struct.Struct('<I')
_VALUE_DTYPE = np.dtype('<u2')  # float16 bit patterns
_EXAMPLE_DTYPE = np.dtype('<u4')
_ZLIB_LEVEL = 1  # level 6 saves 1-2% more at a quarter of the write speed


class IncompatibleStore(errors.UserError, ValueError):
  """A store this run cannot use: saved for other data, order, augmentation, k, C or
  teacher (reading it would train on rows of other images), in another format version,
  or with a manifest that does not parse."""


class MissingStore(errors.UserError, FileNotFoundError):
  """No store where the run reads one."""


class CorruptChunkError(errors.UserError, IOError):
  """A chunk of a done epoch is missing, truncated or does not match its checksum."""


def location(distill, workdir: str) -> str:
  """Where a run's store is: ``config.distill.store``, by default ``WORKDIR/logits``."""
  return distill.store or os.path.join(workdir, 'logits')


def index_dtype(num_classes: int) -> np.dtype:
  """Class-index column dtype: uint16 while every class fits, else int32."""
  return np.dtype('<u2') if num_classes <= 65535 else np.dtype('<i4')


class LogitStore:
  """A logit store on local disk; ``create`` a new one, ``open`` an existing one."""

  def __init__(self, path: str, manifest: dict):
    self.path = path
    self.manifest = manifest
    self.k = manifest['k']
    self.num_classes = manifest['num_classes']
    self.rows_per_epoch = manifest['rows_per_epoch']
    self.chunk_rows = manifest['chunk_rows']
    self.num_chunks = -(-self.rows_per_epoch // self.chunk_rows)
    self.index_dtype = np.dtype(manifest['index_dtype'])
    self._cached_chunk = (None, None)  # ((epoch, chunk), columns): sequential small reads

  @classmethod
  def create(cls, path: str, meta: dict, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> 'LogitStore':
    """Writes the manifest of a new, empty store; ``meta`` holds exactly ``META_FIELDS``."""
    missing = [f for f in META_FIELDS if f not in meta]
    unknown = sorted(set(meta) - set(META_FIELDS))
    if missing or unknown:
      raise ValueError(f'store metadata lacks {missing} and has unknown fields {unknown}; '
                       f'it takes exactly {list(META_FIELDS)}.')
    k, num_classes = meta['k'], meta['num_classes']
    if not 1 <= k <= num_classes:
      raise ValueError(f'top-k k={k} must be between 1 and the class count C={num_classes}.')
    if chunk_rows < 2 or chunk_rows % 2:
      raise ValueError(f'chunk_rows={chunk_rows} must be even and positive, so that no Mixup '
                       'pair (positions 2j, 2j+1) straddles two chunks.')
    if meta['dataset_size'] < 1:
      raise ValueError(f'dataset_size={meta["dataset_size"]} must be at least 1.')
    if os.path.exists(os.path.join(path, _MANIFEST)):
      raise FileExistsError(f'{path} already holds a logit store; open it to resume.')
    rows = order.epoch_length(meta['dataset_size'],
                              order.check_repeats(order.Repeats(**meta['repeats'])))
    manifest = dict(writes.plain_json(meta), format_version=FORMAT_VERSION, rows_per_epoch=rows,
                    chunk_rows=chunk_rows, value_dtype='float16',
                    index_dtype=index_dtype(num_classes).name,
                    example_index_dtype=_EXAMPLE_DTYPE.name, epochs_done=[])
    os.makedirs(path, exist_ok=True)
    _write_manifest(path, manifest)
    return cls(path, manifest)

  @classmethod
  def open(cls, path: str) -> 'LogitStore':
    manifest = _read_manifest(path)
    if manifest.get('format_version') != FORMAT_VERSION:
      raise IncompatibleStore(f'{path} has store format {manifest.get("format_version")}; '
                              f'this code reads format {FORMAT_VERSION}: save it again, or '
                              'read it with the version of tinyvit_jax that wrote it.')
    return cls(path, manifest)

  def check_compatible(self, student: dict) -> None:
    """Refuses a student whose data or targets differ, naming each field and both values."""
    student = writes.plain_json(student)
    problems = []
    for field in STUDENT_FIELDS:
      if field not in student:
        problems.append(f'{field}: the student does not give it (store: '
                        f'{self.manifest[field]!r})')
      else:
        problems += _differences(field, self.manifest[field], student[field])
    if problems:
      raise IncompatibleStore(f'The logit store at {self.path} does not match this student: '
                              + '; '.join(problems)
                              + '. Use the settings it was saved with, or another '
                              '--config.distill.store.')

  @property
  def epochs_done(self) -> list:
    return self.manifest['epochs_done']

  def chunk_positions(self, chunk: int) -> range:
    """Epoch positions held by chunk ``chunk``; the last chunk may be short."""
    return range(chunk * self.chunk_rows, min((chunk + 1) * self.chunk_rows, self.rows_per_epoch))

  def owned_chunks(self, process_index: int = 0, process_count: int = 1) -> range:
    """The contiguous block of chunks that process ``process_index`` of ``process_count`` writes."""
    if not 0 <= process_index < process_count:
      raise ValueError(f'process index {process_index} is outside [0, {process_count}).')
    return range(process_index * self.num_chunks // process_count,
                 (process_index + 1) * self.num_chunks // process_count)

  def missing_chunks(self, epoch: int, process_index: int = 0, process_count: int = 1) -> list:
    """Chunks of the process's block not yet on disk whole; a resumed save starts at the first.

    A chunk counts as present when its header is valid and its file has the length the
    header gives; CRCs are checked by ``mark_epoch_done`` and on every read.
    """
    return [
        c for c in self.owned_chunks(process_index, process_count)
        if not self._chunk_is_whole(epoch, c)
    ]

  def epoch_writer(self, epoch: int, process_index: int = 0,
                   process_count: int = 1) -> 'EpochWriter':
    return EpochWriter(self, epoch, process_index, process_count)

  def mark_epoch_done(self, epoch: int) -> None:
    """Records ``epoch`` as complete, after checking every chunk; call from one process."""
    self.manifest = _read_manifest(self.path)
    if epoch in self.epochs_done:
      return
    missing = self.missing_chunks(epoch)
    if missing:
      shown = ', '.join(_rows_text(self.chunk_positions(c)) for c in missing[:5])
      raise ValueError(f'epoch {epoch} is not complete: {len(missing)} of {self.num_chunks} '
                       f'chunks are missing (rows {shown}{", ..." if len(missing) > 5 else ""}).')
    for chunk in range(self.num_chunks):
      self._chunk_payload(epoch, chunk)
    self.manifest['epochs_done'] = sorted(self.epochs_done + [epoch])
    _write_manifest(self.path, self.manifest)

  def damaged_chunks(self) -> list:
    """Each missing or damaged chunk of the done epochs, as its ``CorruptChunkError`` says
    it; reads the whole store (checksums only, nothing is decoded)."""
    problems = []
    for epoch in self.epochs_done:
      for chunk in range(self.num_chunks):
        try:
          self._chunk_payload(epoch, chunk)
        except CorruptChunkError as error:
          problems.append(str(error))
    return problems

  def read(self, epoch: int, start: int, count: int):
    """(values float16 (count, k), indices, example_index) of positions [start, start+count)."""
    if epoch not in self.epochs_done:
      self.manifest = _read_manifest(self.path)  # it may have finished since we opened it
      if epoch not in self.epochs_done:
        raise ValueError(f'epoch {epoch} of {self.path} is not complete; done epochs: '
                         f'{self.epochs_done}.')
    if count < 0 or start < 0 or start + count > self.rows_per_epoch:
      raise ValueError(f'rows [{start}, {start + count}) are outside the epoch\'s '
                       f'[0, {self.rows_per_epoch}).')
    pieces = []
    for chunk in range(start // self.chunk_rows, -(-(start + count) // self.chunk_rows)):
      first = chunk * self.chunk_rows
      columns = self._chunk_columns(epoch, chunk)
      pieces.append([c[max(start - first, 0):start + count - first] for c in columns])
    if not pieces:
      return (np.empty((0, self.k), np.float16), np.empty(
          (0, self.k), self.index_dtype), np.empty((0,), _EXAMPLE_DTYPE))
    return tuple(np.concatenate(column) for column in zip(*pieces))

  def chunk_path(self, epoch: int, chunk: int) -> str:
    return os.path.join(self.path, f'epoch_{epoch:05d}', f'chunk_{chunk:06d}.bin')

  def _chunk_columns(self, epoch: int, chunk: int):
    if self._cached_chunk[0] != (epoch, chunk):
      payload = self._chunk_payload(epoch, chunk)
      self._cached_chunk = ((epoch, chunk),
                            _decode(payload, len(self.chunk_positions(chunk)), self.k,
                                    self.index_dtype))
    return self._cached_chunk[1]

  def _chunk_payload(self, epoch: int, chunk: int) -> bytes:
    """The chunk's compressed payload, after checking its header, length and CRC."""
    path = self.chunk_path(epoch, chunk)
    try:
      with open(path, 'rb') as f:
        data = f.read()
    except FileNotFoundError:
      data = None
    problem = self._header_problem(epoch, chunk, data, len(data) if data else 0)
    if not problem:
      body = len(data) - _CRC.size
      if _CRC.unpack_from(data, body)[0] != zlib.crc32(memoryview(data)[:body]):
        problem = 'its checksum does not match its bytes (corrupted)'
    if problem:
      raise CorruptChunkError(f'epoch {epoch}, rows {_rows_text(self.chunk_positions(chunk))}: '
                              f'chunk {path} is unusable: {problem}.')
    return memoryview(data)[_HEADER.size:-_CRC.size]

  def _chunk_is_whole(self, epoch: int, chunk: int) -> bool:
    path = self.chunk_path(epoch, chunk)
    try:
      with open(path, 'rb') as f:
        return not self._header_problem(epoch, chunk, f.read(_HEADER.size),
                                        os.fstat(f.fileno()).st_size)
    except FileNotFoundError:
      return False

  def _header_problem(self, epoch: int, chunk: int, header, file_size: int):
    """Why the chunk file with this header and size is not the chunk expected, or None."""
    if header is None:
      return 'it does not exist'
    if len(header) < _HEADER.size:
      return f'it is {file_size} bytes, shorter than a header'
    magic, version, *found, payload_size = _HEADER.unpack_from(header)
    expected = [epoch, chunk, len(self.chunk_positions(chunk)), self.k, self.index_dtype.itemsize]
    if magic != _MAGIC or version != FORMAT_VERSION or found != expected:
      return (f'its header (magic {magic!r}, format {version}, [epoch, chunk, rows, k, index '
              f'bytes] {found}) does not describe {expected}')
    if file_size != _HEADER.size + payload_size + _CRC.size:
      return (f'it is {file_size} bytes, but its header promises '
              f'{_HEADER.size + payload_size + _CRC.size} (truncated)')
    return None


class EpochWriter:
  """Writes one process's chunks of one epoch; a chunk is committed once all its rows arrive.

  ``write`` takes rows of contiguous positions of any length, in any order. Rows of
  chunks already on disk are skipped, so a resumed save pass may simply restart at the
  first missing chunk with any batch size.
  """

  def __init__(self, store: LogitStore, epoch: int, process_index: int, process_count: int):
    if epoch in _read_manifest(store.path)['epochs_done']:
      raise ValueError(f'epoch {epoch} of {store.path} is complete; finished epochs are '
                       'never rewritten.')
    self.store = store
    self.epoch = epoch
    self.chunks = store.owned_chunks(process_index, process_count)
    self.positions = range(
        store.chunk_positions(self.chunks[0]).start if self.chunks else 0,
        store.chunk_positions(self.chunks[-1]).stop if self.chunks else 0)
    os.makedirs(os.path.dirname(store.chunk_path(epoch, 0)), exist_ok=True)
    self._done = set(self.chunks) - set(store.missing_chunks(epoch, process_index, process_count))
    for chunk in self.chunks:  # a killed writer's leftovers; this process alone owns them
      if os.path.exists(store.chunk_path(epoch, chunk) + '.tmp'):
        os.remove(store.chunk_path(epoch, chunk) + '.tmp')
    self._pending = {}  # chunk -> (values, indices, example_index, filled)

  def write(self, start: int, values, indices, example_index) -> None:
    """Stores rows for positions [start, start + len(values))."""
    store = self.store
    values = np.asarray(values, np.float16)
    count = len(values)
    if not (self.positions.start <= start and start + count <= self.positions.stop):
      raise ValueError(f'rows [{start}, {start + count}) are outside this writer\'s positions '
                       f'[{self.positions.start}, {self.positions.stop}) of epoch '
                       f'{self.epoch}.')
    indices, example_index = np.asarray(indices), np.asarray(example_index)
    _check_rows(values, indices, example_index, store)
    for chunk in range(start // store.chunk_rows, -(-(start + count) // store.chunk_rows)):
      if chunk in self._done or not count:
        continue
      rows = store.chunk_positions(chunk)
      lo, hi = max(start, rows.start), min(start + count, rows.stop)
      if chunk not in self._pending:
        self._pending[chunk] = (np.zeros(
            (len(rows), store.k), np.float16), np.zeros((len(rows), store.k), store.index_dtype),
                                np.zeros(len(rows), _EXAMPLE_DTYPE), np.zeros(len(rows), bool))
      *columns, filled = self._pending[chunk]
      for column, new in zip(columns, (values, indices, example_index)):
        column[lo - rows.start:hi - rows.start] = new[lo - start:hi - start]
      filled[lo - rows.start:hi - rows.start] = True
      if filled.all():
        self._commit(chunk, *columns)

  def close(self) -> None:
    """Raises if some chunk got only part of its rows: those rows would be lost."""
    if self._pending:
      partial = ', '.join(
          f'chunk {c} has {f.sum()} of {len(f)} rows' for c, (*_,
                                                              f) in sorted(self._pending.items()))
      raise ValueError(f'epoch {self.epoch}: writer closed with incomplete chunks ({partial}).')

  def __enter__(self):
    return self

  def __exit__(self, error_type, *_):
    if error_type is None:
      self.close()

  def _commit(self, chunk: int, values, indices, example_index) -> None:
    payload = _encode(values, indices, example_index)
    body = _HEADER.pack(_MAGIC, FORMAT_VERSION, self.epoch, chunk, len(values), self.store.k,
                        self.store.index_dtype.itemsize, len(payload)) + payload
    path = self.store.chunk_path(self.epoch, chunk)
    with writes.replacing(path, _RERUN) as tmp, open(tmp, 'wb') as f:
      f.write(body + _CRC.pack(zlib.crc32(body)))
    del self._pending[chunk]
    self._done.add(chunk)


def _check_rows(values, indices, example_index, store: LogitStore) -> None:
  """Catches a teacher bug at the write, not epochs later in a student."""
  count = len(values)
  if (values.shape != (count, store.k) or indices.shape != (count, store.k)
      or example_index.shape != (count,)):
    raise ValueError(f'expected values and indices of shape ({count}, {store.k}) and '
                     f'example indices of shape ({count},); got {values.shape}, '
                     f'{indices.shape} and {example_index.shape}.')
  if not (np.all(values >= 0) and np.all(values <= 1)):  # False for NaN too
    raise ValueError('top-k values must be probabilities in [0, 1] (the softmax, in float16).')
  if np.any(values[:, :-1] < values[:, 1:]):
    raise ValueError('top-k values must be sorted descending along each row.')
  if count and (indices.min() < 0 or indices.max() >= store.num_classes):
    raise ValueError(f'class indices must be in [0, {store.num_classes}); got '
                     f'[{indices.min()}, {indices.max()}].')
  if count and (example_index.min() < 0 or example_index.max() >= store.manifest['dataset_size']):
    raise ValueError(f'example indices must be in [0, {store.manifest["dataset_size"]}); got '
                     f'[{example_index.min()}, {example_index.max()}].')


def _encode(values, indices, example_index) -> bytes:
  bits = values.view(_VALUE_DTYPE)
  deltas = bits.copy()
  deltas[:, 1:] = bits[:, :-1] - bits[:, 1:]  # uint16 arithmetic wraps: lossless either way
  planes = [_byte_planes(deltas), _byte_planes(indices), _byte_planes(example_index[:, None])]
  return zlib.compress(b''.join(planes), _ZLIB_LEVEL)


def _decode(payload, rows: int, k: int, dtype: np.dtype):
  data = np.frombuffer(zlib.decompress(payload), np.uint8)
  sizes = np.cumsum([rows * k * 2, rows * k * dtype.itemsize])
  deltas = _from_byte_planes(data[:sizes[0]], rows, k, _VALUE_DTYPE)
  bits = deltas.copy()
  bits[:, 1:] = deltas[:, :1] - np.cumsum(deltas[:, 1:], axis=1, dtype=_VALUE_DTYPE)
  indices = _from_byte_planes(data[sizes[0]:sizes[1]], rows, k, dtype)
  example_index = _from_byte_planes(data[sizes[1]:], rows, 1, _EXAMPLE_DTYPE)[:, 0]
  return bits.view(np.float16), indices, example_index


def _byte_planes(column: np.ndarray) -> bytes:
  """(rows, m) array as bytes ordered [byte b][column j][row r]."""
  rows, m = column.shape
  as_bytes = np.ascontiguousarray(column, column.dtype.newbyteorder('<')).view(np.uint8)
  return as_bytes.reshape(rows, m, -1).transpose(2, 1, 0).tobytes()


def _from_byte_planes(data: np.ndarray, rows: int, m: int, dtype: np.dtype) -> np.ndarray:
  planes = data.reshape(dtype.itemsize, m, rows).transpose(2, 1, 0)
  return np.ascontiguousarray(planes).view(dtype).reshape(rows, m)


def _read_manifest(path: str) -> dict:
  try:
    with open(os.path.join(path, _MANIFEST)) as f:
      manifest = json.load(f)
    manifest.setdefault('repeats', _PLAIN_REPEATS)
    manifest.setdefault('views_per_example', 0)
    return manifest
  except FileNotFoundError:
    raise MissingStore(f'{path} holds no logit store ({_MANIFEST} is missing): run the save '
                       'stage first (--mode=save_logits, or a recipe whose stages include '
                       'it), or point --config.distill.store at a saved one.') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise IncompatibleStore(f'{os.path.join(path, _MANIFEST)} is not a store manifest '
                            f'({error}); expected the JSON a save pass writes.') from None


def _write_manifest(path: str, manifest: dict) -> None:
  writes.write_json(os.path.join(path, _MANIFEST), manifest, sort_keys=True, then=_RERUN)


def _differences(name: str, stored, given) -> list:
  """'name: store X, student Y' for each differing leaf, recursing into dicts."""
  if isinstance(stored, dict) and isinstance(given, dict):
    return [
        problem for key in sorted(set(stored) | set(given)) for problem in _differences(
            f'{name}.{key}', stored.get(key, '<absent>'), given.get(key, '<absent>'))
    ]
  return [] if stored == given else [f'{name}: store {stored!r}, student {given!r}']


def _rows_text(rows: range) -> str:
  return f'[{rows.start}, {rows.stop})'
