"""One run at a time in a workdir (or a logit store): ``DIR/run.lock`` names its holder.

The lock file holds the holder's host, pid, process start time and start date. It is
created with O_EXCL, so of two racing starts exactly one wins (the other is refused, or
told to retry if it reads the file before the winner has written it). It is removed on a
normal exit, an error and a SIGTERM stop (exit 143); a SIGKILL leaves it behind, and the
next run takes it over, with a warning, once its holder is dead:

* on this host: its pid is gone, or now belongs to a younger process (pid reused);
* on another host, where liveness cannot be asked: its heartbeat is stale. The holder
  refreshes the file's mtime every ``HEARTBEAT_S``; a lock unrefreshed for ``STALE_S``
  is taken over, so a job restarted on a new VM resumes without a manual step. Until
  then the run is refused, naming the host, and deleting the file takes it over at once.

A multi-process run (``jax.distributed``) holds one lock: process 0 takes it and tells the
others whether it got it, so a refusal stops every process rather than leaving them to
wait for process 0 in their first collective.
"""
import contextlib
import datetime
import fcntl
import json
import os
import socket
import threading
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from tinyvit_jax import errors

LOCK = 'run.lock'
HEARTBEAT_S = 60
STALE_S = 600  # ten missed heartbeats: a run that slow is dead or hung


class Locked(errors.UserError, RuntimeError):
  """Another live run holds the directory."""


@contextlib.contextmanager
def hold(directory: str, what: str = 'workdir'):
  """Holds ``directory``'s lock (``what`` names it in messages) for the ``with`` block."""
  path = os.path.join(directory, LOCK)
  error, me = None, None
  if jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
    try:
      me = _acquire(path, what)
    except Locked as refused:
      error = refused
  if jax.process_count() > 1:
    got = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not got and error is None:
      error = Locked(f'{what} {directory}: process 0 was refused its lock (see its log).')
  if error:
    raise error
  stop = threading.Event()
  if me:
    threading.Thread(target=_heartbeat, args=(path, stop), daemon=True).start()
  try:
    yield
  finally:
    stop.set()
    if me and _read(path) == me:  # not if a run that judged us dead took it over
      os.remove(path)


def holder() -> dict:
  """This process, as a lock file names it."""
  return dict(host=socket.gethostname(), pid=os.getpid(), pid_start=_start_ticks(os.getpid()),
              started=datetime.datetime.now().astimezone().isoformat(timespec='seconds'))


def _acquire(path: str, what: str) -> dict:
  me = holder()
  # Serialises takeovers on this host: two reruns must not both remove a dead holder's
  # lock and then one of them the other's new one. (Creation needs no such guard.)
  directory = os.open(os.path.dirname(path), os.O_RDONLY)
  try:
    with contextlib.suppress(OSError):  # a file system without flock: O_EXCL still holds
      fcntl.flock(directory, fcntl.LOCK_EX)
    if os.path.exists(path):
      other = _read(path)
      reason = _dead_reason(other, path)
      if reason is None:
        raise Locked(_refusal(path, what, other))
      if reason:
        logging.warning('%s %s: taking over the lock of a dead run (%s; %s).', what,
                        os.path.dirname(path), _describe(other), reason)
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
    try:
      created = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:  # another run created it meanwhile
      raise Locked(_refusal(path, what, _read(path))) from None
    with os.fdopen(created, 'w') as f:
      json.dump(me, f)
  finally:
    os.close(directory)
  return me


def _dead_reason(other: dict | None, path: str) -> str | None:
  """Why the lock's holder is dead ('' if the lock is gone), or None while it may live."""
  try:
    silent = time.time() - os.path.getmtime(path)
  except FileNotFoundError:
    return ''  # released meanwhile: nothing to take over
  if other is None:
    return None if silent < STALE_S else f'an unreadable lock file, untouched for {silent:.0f} s'
  if other.get('host') != socket.gethostname():
    return None if silent < STALE_S else f'no heartbeat for {silent:.0f} s'
  start = _start_ticks(other['pid'])
  if start is None:
    return f'pid {other["pid"]} is not running'
  if other.get('pid_start') is not None and start != other['pid_start']:
    return f'pid {other["pid"]} now belongs to a process started later'
  return None


def _refusal(path: str, what: str, other: dict | None) -> str:
  directory = os.path.dirname(path)
  if other is None:
    return (f'{what} {directory} is being locked by another run ({path} is unreadable); '
            f'retry, or delete {path} if no run uses it.')
  if other.get('host') == socket.gethostname():
    fix = f'wait for it, stop it (kill {other["pid"]}), or use another {what}'
  else:
    fix = (f'wait for it or stop it; if it is dead, delete {path} (a run takes it over '
           f'by itself {STALE_S} s after its last heartbeat)')
  return f'{what} {directory} is in use by another run ({_describe(other)}): {fix}.'


def _describe(other: dict | None) -> str:
  if other is None:
    return 'holder unknown'
  return f'pid {other.get("pid")} on {other.get("host")}, since {other.get("started")}'


def _read(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _heartbeat(path: str, stop: threading.Event) -> None:
  while not stop.wait(HEARTBEAT_S):
    with contextlib.suppress(OSError):
      os.utime(path)


def _start_ticks(pid: int) -> int | None:
  """The process's start time (clock ticks after boot), None if it is gone (a zombie,
  killed but not yet reaped, is gone). Without /proc (not Linux), 0 for any live pid:
  only the pid is compared."""
  if os.path.exists('/proc/self/stat'):
    try:
      with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
      return None
    return None if fields[0] == 'Z' else int(fields[19])
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return None
  except PermissionError:
    pass
  return 0
