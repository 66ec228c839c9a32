"""A crash on one process, as ``fault_broadcast`` tells the others (the UserErrors of two
real processes are tests/test_multiprocess.py's): its traceback stays in its own log, and
the shared line names the process, its host and the exception, and stays its last line.
One process here, as process 1 of 2, with a stand-in for JAX's coordination service
key-value store."""
import socket
import subprocess
import sys

from workdirs import REPO, environment

CRASH = r'''
import os
import threading
from jax._src import distributed
from tinyvit_jax import fault_broadcast


class Store:
  """The coordination service's key-value store, for the threads of one process."""

  def __init__(self):
    self.values, self.changed = {}, threading.Condition()

  def key_value_set(self, key, value):
    if key.startswith('tinyvit_jax/fault_seen/'):  # process 0 leaves once it reads this
      os.write(2, b':UNKNOWN:Error received from peer {grpc_status:14, grpc_message:"Socket '
               b'closed"}\n')  # what gRPC's C++ thread then logs, past Python's sys.stderr
    with self.changed:
      if key in self.values:
        raise RuntimeError(f'ALREADY_EXISTS: {key}')
      self.values[key] = value
      self.changed.notify_all()

  def blocking_key_value_get(self, key, timeout_ms):
    with self.changed:
      if not self.changed.wait_for(lambda: key in self.values, timeout_ms / 1000):
        raise RuntimeError('DEADLINE_EXCEEDED')
      return self.values[key]


state = distributed.global_state
state.client, state.process_id, state.num_processes = Store(), 1, 2
with fault_broadcast.shared():
  {}.pop('step')  # a crash: not a UserError
'''


def test_a_crash_keeps_its_traceback_and_shares_one_line():
  result = subprocess.run([sys.executable, '-c', CRASH], cwd=REPO, env=environment(),
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'Traceback' in result.stderr and "\nKeyError: 'step'\n" in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: process 1 of 2 (host {socket.gethostname()}) crashed: KeyError: 'step' (its "
      'log has the traceback)')
