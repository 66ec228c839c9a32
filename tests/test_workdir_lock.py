"""The workdir lock: a live holder refuses a second run by name; a dead one (killed, its
pid reused, silent on another host) is taken over with a warning; one lock per
multi-process run, process 0's answer broadcast to the others; a live holder's heartbeat.
(A real run's refusal and a SIGKILLed run's takeover are in ``test_train_system``.)"""
import json
import os
import socket
import subprocess
import time

import jax
import numpy as np
import pytest

from tinyvit_jax.train import workdir_lock


def write_lock(directory, **changes):
  holder = dict(workdir_lock.holder(), **changes)
  with open(os.path.join(directory, workdir_lock.LOCK), 'w') as f:
    json.dump(holder, f)
  return holder


def dead_pid() -> int:
  process = subprocess.Popen(['true'])
  process.wait()
  return process.pid


def test_a_held_workdir_refuses_a_second_holder_and_is_released_after(tmp_path):
  with workdir_lock.hold(str(tmp_path)):
    with pytest.raises(
        workdir_lock.Locked,
        match=(f'workdir {tmp_path} is in use by another run \\(pid {os.getpid()} on .*, since '
               f'.*\\): wait for it, stop it \\(kill {os.getpid()}\\), or use another workdir')):
      with workdir_lock.hold(str(tmp_path)):
        pass
  assert not os.path.exists(tmp_path / workdir_lock.LOCK)
  with pytest.raises(RuntimeError), workdir_lock.hold(str(tmp_path)):
    raise RuntimeError('a failed run')
  assert not os.path.exists(tmp_path / workdir_lock.LOCK)


@pytest.mark.parametrize('reused', [False, True])
def test_a_dead_holder_on_this_host_is_taken_over_with_a_warning(tmp_path, caplog, reused):
  """Killed: its pid is gone. Reused: our own pid, recorded with another start time."""
  dead = write_lock(tmp_path, **(dict(pid_start=1) if reused else dict(pid=dead_pid())))
  reason = 'now belongs to a process started later' if reused else 'is not running'
  with workdir_lock.hold(str(tmp_path)):
    with open(tmp_path / workdir_lock.LOCK) as f:
      assert json.load(f)['pid_start'] == workdir_lock.holder()['pid_start']
  assert f'taking over the lock of a dead run (pid {dead["pid"]} on' in caplog.text
  assert reason in caplog.text


def test_another_hosts_lock_is_refused_until_its_heartbeat_is_stale(tmp_path, caplog):
  write_lock(tmp_path, host='other-vm')
  with pytest.raises(
      workdir_lock.Locked,
      match=(f'on other-vm, .*if it is dead, delete {tmp_path}/{workdir_lock.LOCK}')):
    with workdir_lock.hold(str(tmp_path)):
      pass
  silent = time.time() - workdir_lock.STALE_S - 1
  os.utime(tmp_path / workdir_lock.LOCK, (silent, silent))
  with workdir_lock.hold(str(tmp_path)):
    pass
  assert 'on other-vm' in caplog.text and 'no heartbeat for' in caplog.text


def test_only_process_0_of_a_run_takes_the_lock(tmp_path, monkeypatch):
  """Process 1 neither takes nor is refused by the lock process 0 holds."""
  held = write_lock(tmp_path)
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  with workdir_lock.hold(str(tmp_path)):
    pass
  with open(tmp_path / workdir_lock.LOCK) as f:
    assert json.load(f) == held
  os.remove(tmp_path / workdir_lock.LOCK)
  with workdir_lock.hold(str(tmp_path)):
    assert not os.path.exists(tmp_path / workdir_lock.LOCK)


def test_the_holders_heartbeat_keeps_another_host_from_taking_its_lock(tmp_path, monkeypatch):
  """The holder refreshes the lock's mtime every HEARTBEAT_S, so a lock that has been held
  for longer than STALE_S is still refused to another host; without the heartbeat that
  host would take it over from a live run."""
  monkeypatch.setattr(workdir_lock, 'HEARTBEAT_S', 0.02)
  monkeypatch.setattr(workdir_lock, 'STALE_S', 60)
  path = tmp_path / workdir_lock.LOCK
  with workdir_lock.hold(str(tmp_path)):
    silent = time.time() - 2 * workdir_lock.STALE_S  # as if the holder had been silent
    os.utime(path, (silent, silent))
    deadline = time.time() + 10
    while os.path.getmtime(path) < time.time() - workdir_lock.STALE_S:
      assert time.time() < deadline, 'the holder never refreshed its lock'
      time.sleep(0.01)
    here = socket.gethostname()
    monkeypatch.setattr(socket, 'gethostname', lambda: 'other-vm')  # the other host
    with pytest.raises(workdir_lock.Locked, match=f'in use by another run .* on {here}, '):
      with workdir_lock.hold(str(tmp_path)):
        pass
    monkeypatch.setattr(socket, 'gethostname', lambda: here)
  assert not path.exists()


@pytest.mark.parametrize('free', [True, False])
def test_process_0s_answer_reaches_every_process(tmp_path, monkeypatch, free):
  """Two processes of one run, each calling hold(): process 0 takes the real lock and
  broadcasts whether it got it; process 1 goes on, or stops with the refusal named."""
  sent = []

  def process(index: int):
    monkeypatch.setattr(jax, 'process_index', lambda: index)
    monkeypatch.setattr(jax, 'process_count', lambda: 2)
    broadcast = (lambda value: sent.append(int(value)) or value) if index == 0 else (
        lambda value: np.int32(sent[-1]))  # process 1 receives what process 0 sent
    monkeypatch.setattr(workdir_lock.multihost_utils, 'broadcast_one_to_all', broadcast)
    return workdir_lock.hold(str(tmp_path))

  if not free:
    write_lock(tmp_path, host='other-vm')  # a live run elsewhere
    with pytest.raises(workdir_lock.Locked, match='in use by another run'), process(0):
      pass
    assert sent == [0]
    with pytest.raises(workdir_lock.Locked, match=f'workdir {tmp_path}: process 0 was '
                       'refused its lock'), process(1):
      pass
    return
  with process(0):
    assert sent == [1] and os.path.exists(tmp_path / workdir_lock.LOCK)
    with process(1):  # neither refused nor taking a lock of its own
      pass
  assert not os.path.exists(tmp_path / workdir_lock.LOCK)
