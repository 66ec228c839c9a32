"""A fault one process of a multi-process run meets stops every process, with its line.

Alone, the process that meets a fault (a ``UserError``: a refusal, a damaged store chunk, a
full disk; or a crash) prints its line and exits, and the others wait in their next
collective until JAX's heartbeat timeout stops them with "another task died", which does
not say why. Here that process publishes its line under one key of JAX's coordination
service, and a thread in every process waits on that key: on seeing it, each prints the
line and exits with ``STATUS``, wherever its main thread is blocked. The first fault
published wins, so every process prints the same line.
"""
import contextlib
import json
import os
import socket
import sys
import threading
import time
import traceback

from jax._src import distributed

from tinyvit_jax import errors

STATUS = 1  # what ``sys.exit('error: ...')`` gives a one-process run
_KEY = 'tinyvit_jax/fault'
_SEEN = 'tinyvit_jax/fault_seen/'  # + process index: that process has printed the line
_POLL_MS = 500  # how long one wait on the key lasts; a stop waits at most this
_SEEN_WAIT_S = 5.0  # process 0 serves the key: it exits last, once every process read it
# Each other process exits the moment it has said so; process 0, whose exit ends the
# coordination service, waits this long more, or a peer's JAX error poller, seeing the
# service gone, may abort that peer (SIGABRT) before its own exit.
_PEERS_EXIT_S = 1.0


@contextlib.contextmanager
def shared():
  """In a multi-process run, turns a fault inside the block into every process's stop.

  The faulting process prints its traceback first if the fault is a crash (an exception
  that is not a ``UserError``); the shared line then says where to find it. Outside a
  multi-process run this does nothing.
  """
  state = distributed.global_state
  if state.client is None or (state.num_processes or 1) < 2:
    yield
    return
  watcher = _Watcher(state.client, state.process_id, state.num_processes)
  where = f'process {state.process_id} of {state.num_processes} (host {socket.gethostname()})'
  try:
    yield
  except errors.UserError as error:
    watcher.stop_all(f'error: {where}: {error}')
  except Exception as error:  # a crash: the traceback stays in this process's log
    traceback.print_exc()
    first = (str(error).splitlines() or [''])[0]
    watcher.stop_all(f'error: {where} crashed: {type(error).__name__}: {first} (its log has '
                     'the traceback)')
  finally:
    watcher.stop()


class _Watcher:
  """The thread that waits on the fault key, and the one way out of the process."""

  def __init__(self, client, index: int, count: int):
    self._client, self._index, self._count = client, index, count
    self._stopping = threading.Event()
    self._exiting = threading.Lock()
    self._thread = threading.Thread(target=self._watch, name='fault_broadcast', daemon=True)
    self._thread.start()

  def stop(self) -> None:
    self._stopping.set()
    self._thread.join()

  def stop_all(self, line: str) -> None:
    """Publishes ``line`` (unless another process's came first) and exits with it."""
    with contextlib.suppress(Exception):  # ALREADY_EXISTS: the first fault is the one told
      self._client.key_value_set(_KEY, json.dumps(line))
    try:
      line = json.loads(self._client.blocking_key_value_get(_KEY, _POLL_MS))
    except Exception:  # pylint: disable=broad-except  # the service is gone: say it here
      pass
    self._exit(line)

  def _watch(self) -> None:
    while not self._stopping.is_set():
      try:
        value = self._client.blocking_key_value_get(_KEY, _POLL_MS)
      except Exception as error:  # pylint: disable=broad-except
        if 'DEADLINE_EXCEEDED' in str(error):
          continue  # no fault yet
        return  # the service is gone: JAX's heartbeat stops this process
      self._exit(json.loads(value))

  def _exit(self, line: str) -> None:
    self._exiting.acquire()  # the watcher and the faulting main thread: one prints
    print(f'\n{line}', file=sys.stderr, flush=True)  # own line, after any progress bar
    sys.stdout.flush()
    # The line stays last: what the shutdown logs after it (a C++ thread's gRPC "Socket
    # closed" once process 0 has left) would bury it.
    _silence_output()
    with contextlib.suppress(Exception):
      self._client.key_value_set(_SEEN + str(self._index), '')
      if self._index == 0:
        deadline = time.monotonic() + _SEEN_WAIT_S
        for other in range(1, self._count):
          left_ms = int((deadline - time.monotonic()) * 1000)
          self._client.blocking_key_value_get(_SEEN + str(other), max(left_ms, 1))
        time.sleep(_PEERS_EXIT_S)
    os._exit(STATUS)  # pylint: disable=protected-access  # the main thread may be in a collective


def _silence_output() -> None:
  """Points this process's stdout and stderr (the descriptors, for C++ too) at /dev/null."""
  devnull = os.open(os.devnull, os.O_WRONLY)
  for descriptor in (1, 2):
    os.dup2(devnull, descriptor)
