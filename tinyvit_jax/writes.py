"""The write layer: a file appears whole or not at all, and a full disk is one line.

``replacing`` writes a file or a folder under a temporary name beside it, fsyncs it and
renames it over the target (``write_json`` writes JSON through it); ``writing`` guards the
writes that cannot be replaced whole (appends, orbax's checkpoints). A full disk in either
raises ``DiskFull``, which each CLI prints as ``error: ...`` without a traceback.
``plain_json`` is a value as a file ``write_json`` wrote reads it back.
"""
import contextlib
import errno
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator

from tinyvit_jax import errors

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(errors.UserError, OSError):
  """A write found no space left; the message names the path, the free space and the fix:
  free space or move ``move`` (the flag that says where the file goes), then ``then``."""

  def __init__(self, path: str, then: str = 'rerun', move: str = '--workdir'):
    self.path = str(path)
    super().__init__(f'no space left writing {self.path} ({free_bytes(self.path):,} bytes '
                     f'free): free space or move {move}, then {then}.')


def is_full(error: BaseException) -> bool:
  """ENOSPC or EDQUOT, from Python's I/O, or as text in the error of a library that writes
  for us: tensorstore's ValueError (orbax's checkpoints), ArrayRecord's RuntimeError,
  safetensors' SafetensorError."""
  if isinstance(error, OSError):
    return error.errno in FULL_ERRNOS
  return any(f"[os_error_code='{code}']" in str(error) or os.strerror(code) in str(error)
             for code in FULL_ERRNOS)


@contextlib.contextmanager
def writing(path: str, then='rerun', move: str = '--workdir'):
  """Turns a full disk inside the block into ``DiskFull(path)``. ``then`` (text, or a
  function giving it once the write has failed) says what a rerun does."""
  try:
    yield
  except Exception as error:  # pylint: disable=broad-except (each library has its own)
    if isinstance(error, DiskFull) or not is_full(error):
      raise
    raise DiskFull(path, then() if callable(then) else then, move) from None


@contextlib.contextmanager
def replacing(path: str, then='rerun', move: str = '--workdir') -> Iterator[str]:
  """Yields ``path + '.tmp'`` for the block to write, as a file or a folder it creates.

  When the block returns, the temporary is fsynced and renamed over ``path``, and the
  rename fsynced, so ``path`` holds its old contents or the whole new ones even after a
  kill or a power cut, and is durable before anything written later refers to it. What
  the block raises removes the temporary (a kill leaves it, and the next write of
  ``path`` removes it); a full disk raises ``DiskFull`` as ``writing`` does.
  """
  tmp = path + '.tmp'
  _remove(tmp)
  with writing(path, then, move):
    try:
      yield tmp
      _fsync(tmp)
      os.replace(tmp, path)
      _fsync(os.path.dirname(path) or '.')
    except BaseException:
      _remove(tmp)  # before DiskFull counts the free space
      raise


def write_json(path: str, value, sort_keys: bool = False, then='rerun',
               move: str = '--workdir') -> None:
  """Writes ``value`` as JSON (indented by one) through ``replacing``."""
  text = json.dumps(value, indent=1, sort_keys=sort_keys, default=_plain)
  with replacing(path, then, move) as tmp, open(tmp, 'w') as f:
    f.write(text)


def plain_json(value):
  """``value`` as a file ``write_json`` wrote reads it back (tuples as lists, numpy and
  jax numbers as Python ones, a ConfigDict as a dict), so that it compares fairly with
  one."""
  return json.loads(json.dumps(value, default=_plain))


def _plain(value):
  """JSON for what ``json`` does not know: a ConfigDict, numpy's and jax's arrays."""
  if hasattr(value, 'to_dict'):
    return value.to_dict()
  if hasattr(value, 'tolist'):
    return value.tolist()
  raise TypeError(f'{value!r} ({type(value).__name__}) is not JSON: give plain numbers, '
                  'strings, lists or dicts.')


def _fsync(path: str) -> None:
  """Flushes a file, or a folder's entries, to the disk."""
  descriptor = os.open(path, os.O_RDONLY)
  try:
    os.fsync(descriptor)
  finally:
    os.close(descriptor)


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path, ignore_errors=True)
  else:
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


class QuietFullDisk(logging.Filter):
  """Drops log records of a full-disk error: orbax logs its writer thread's exception (and
  asyncio its writes' unretrieved ones) with a traceback before raising it at the next save
  or ``wait``, where it becomes the one line of ``DiskFull``."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.exc_info and is_full(record.exc_info[1]))


def quiet_abandoned_writes() -> None:
  """Drops the reports of tensorstore writes that finish after orbax gave up on a save (a
  full disk): each calls back into the save's event loop, closed by then, and Python
  prints that ``RuntimeError`` as an unraisable exception with a traceback."""
  report = sys.unraisablehook

  def hook(unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'):
      report(unraisable)

  sys.unraisablehook = hook


def free_bytes(path: str) -> int:
  """Free bytes on the filesystem of ``path`` (or of its nearest existing parent)."""
  path = os.path.abspath(path)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return shutil.disk_usage(path).free
