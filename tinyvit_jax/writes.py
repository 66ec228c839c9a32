"""A full disk as one line: the write that failed, the space left, and what to do.

Every write of a run (checkpoints, logit-store chunks and manifests, metrics, the stage
record) goes through ``writing``, so ENOSPC or EDQUOT ends the run with ``DiskFull``,
which ``main`` prints as ``error: ...`` without a traceback.
"""
import contextlib
import errno
import logging
import os
import shutil
import sys

from tinyvit_jax import errors

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(errors.UserError, OSError):
  """A write found no space left; the message names the path, the free space and the fix."""

  def __init__(self, path: str, then: str = 'rerun'):
    self.path = str(path)
    super().__init__(f'no space left writing {self.path} ({free_bytes(self.path):,} bytes '
                     f'free): free space or move --workdir, then {then}.')


def is_full(error: BaseException) -> bool:
  """ENOSPC or EDQUOT, from Python's I/O or (as text in a ValueError) from tensorstore,
  which writes orbax's checkpoints."""
  if isinstance(error, OSError):
    return error.errno in FULL_ERRNOS
  return any(f"[os_error_code='{code}']" in str(error) for code in FULL_ERRNOS)


@contextlib.contextmanager
def writing(path: str, then='rerun', partial: str | None = None):
  """Turns a full disk inside the block into ``DiskFull(path)``, removing ``partial`` (a
  temporary file the block was writing) so nothing half-written stays behind. ``then``
  (text, or a function giving it once the write has failed) says what a rerun does."""
  try:
    yield
  except (OSError, ValueError) as error:
    if isinstance(error, DiskFull) or not is_full(error):
      raise
    if partial is not None:
      with contextlib.suppress(FileNotFoundError):
        os.remove(partial)
    raise DiskFull(path, then() if callable(then) else then) from None


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
