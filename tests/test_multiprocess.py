"""``jax.distributed`` for real: 2 processes on a loopback coordinator, 4 CPU devices each.

Every run is ``python -m tinyvit_jax.main --config=tests/train_config_fpd.py``: the FPD
save pass of a random-init teacher's top-3 rows (each process writes its own block of the
store), then one epoch (22 steps at batch 64) of the quickstart's student trained from the
store, each process loading its half of every batch and reading its rows of the store.
Two such processes must do what one process with all 8 devices does, and when one of
them is killed the other must stop (JAX's heartbeat, ``main --heartbeat_timeout``) so
that a restart of both resumes from the last checkpoint; a SIGTERM to one of them must
stop both at one checkpointed step.
"""
import os
import random
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from configs import quickstart
from test_distill_save_pass import store_files
from test_train_system import REPO, STEPS, checkpoint_steps, environment, examples_seen
from test_train_system import step_losses
from tinyvit_jax import model_checkpoint
from tinyvit_jax.models import create_model
from tinyvit_jax.train import metrics

CONFIG = 'tests/train_config_fpd.py'
HEARTBEAT_TIMEOUT = 10  # seconds; JAX's default, 100, would only make the test slower
STOP_WITHIN = 60  # seconds from a kill to the other process's exit, load included
_STARTED = []


@pytest.fixture(autouse=True)
def no_process_left():
  """A failed test must not leave a process waiting for its peer."""
  yield
  for process in _STARTED:
    if process.poll() is None:
      process.kill()
      process.wait()


@pytest.fixture(scope='module')
def teacher(tmp_path_factory):
  """A random-init teacher of the student's size: the store's rows need not be good."""
  config = quickstart.student_config(runlocal=False)
  kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in config.model.kwargs.items()}
  model = create_model(config.model.name, num_classes=config.num_classes, rngs=nnx.Rngs(7),
                       **kwargs)
  directory = str(tmp_path_factory.mktemp('teacher') / 'export')
  model_checkpoint.save_model(directory, model, config.model.name,
                              num_classes=config.num_classes, **kwargs)
  return directory


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start_processes(workdir, *overrides) -> list:
  """Both processes of a 2-process run, logging to ``workdir/../<name>.process<i>.log``."""
  address = f'127.0.0.1:{free_port()}'
  processes = []
  for index in range(2):
    env = dict(environment(devices=4), JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES='2',
               JAX_PROCESS_ID=str(index))
    log = open(f'{workdir}.process{index}.log', 'a')
    processes.append(subprocess.Popen(
        [sys.executable, '-m', 'tinyvit_jax.main', f'--config={CONFIG}', f'--workdir={workdir}',
         '--distributed', f'--heartbeat_timeout={HEARTBEAT_TIMEOUT}', *overrides],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    log.close()
  _STARTED.extend(processes)
  return processes


def process_log(workdir, index: int) -> str:
  with open(f'{workdir}.process{index}.log') as f:
    return f.read()


def finish(processes, workdir) -> None:
  for index, process in enumerate(processes):
    assert process.wait(timeout=900) == 0, process_log(workdir, index)[-3000:]


def saved_state(workdir, step: int = STEPS) -> list:
  """A checkpoint's leaves as numpy, whatever devices and processes saved it."""
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  with ocp.PyTreeCheckpointer() as checkpointer:
    tree = checkpointer.metadata(path).item_metadata.tree
    return checkpointer.restore(path, restore_args=jax.tree.map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree))


@pytest.fixture(scope='module')
def one_process(teacher, tmp_path_factory):
  """The reference: one process holding all 8 devices."""
  workdir = tmp_path_factory.mktemp('one') / 'run'
  result = subprocess.run(
      [sys.executable, '-m', 'tinyvit_jax.main', f'--config={CONFIG}', f'--workdir={workdir}',
       f'--config.distill.teacher={teacher}'], cwd=REPO, env=environment(devices=8),
      capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  return workdir


@pytest.fixture(scope='module')
def two_processes(teacher, tmp_path_factory):
  """An uninterrupted 2-process run, save pass included."""
  workdir = tmp_path_factory.mktemp('two') / 'run'
  finish(start_processes(workdir, f'--config.distill.teacher={teacher}'), workdir)
  return workdir


@pytest.mark.slow
def test_two_processes_of_four_devices_equal_one_of_eight(one_process, two_processes):
  one, two = step_losses(one_process), step_losses(two_processes)
  assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([two[s] for s in sorted(two)], [one[s] for s in sorted(one)],
                             rtol=0, atol=1e-5)
  assert examples_seen(two_processes) == examples_seen(one_process)
  assert [row['step'] for row in examples_seen(two_processes)] == list(range(1, STEPS + 1))
  # Each process saved its own block of the store: together, the one process's bytes.
  assert (store_files(os.path.join(two_processes, 'logits'))
          == store_files(os.path.join(one_process, 'logits')))
  evals = [[row for row in metrics.read_metrics(w) if 'eval_top1' in row]
           for w in (one_process, two_processes)]
  assert [r['eval_examples'] for r in evals[0]] == [r['eval_examples'] for r in evals[1]]
  np.testing.assert_allclose([r['eval_loss'] for r in evals[1]],
                             [r['eval_loss'] for r in evals[0]], rtol=0, atol=1e-5)


def signal_one_process(teacher, store_run, workdir, signum, last_step: int):
  """Starts a 2-process run reading ``store_run``'s store and, once it has logged a
  number of steps drawn at run time from [6, last_step], sends ``signum`` to one of the
  processes, drawn too. Returns (processes, the one signalled, its steps by then, overrides)."""
  overrides = (f'--config.distill.teacher={teacher}',
               f'--config.distill.store={store_run}/logits')
  processes = start_processes(workdir, *overrides)
  draw = random.Random()  # drawn now, not chosen in advance
  after, target = draw.randint(6, last_step), draw.randint(0, 1)
  deadline = time.time() + 600
  while len(step_losses(workdir)) < after:
    assert all(p.poll() is None for p in processes), process_log(workdir, 0)[-3000:]
    assert time.time() < deadline, 'the run made no progress'
    time.sleep(0.05)
  processes[target].send_signal(signum)
  return processes, target, after, overrides


def assert_restart_resumes_exactly(workdir, overrides, reference):
  finish(start_processes(workdir, *overrides), workdir)
  for a, b in zip(saved_state(reference), saved_state(workdir), strict=True):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
  assert examples_seen(workdir) == examples_seen(reference)


@pytest.mark.slow
def test_a_killed_process_stops_the_other_and_both_resume_exactly(teacher, two_processes,
                                                                  tmp_path):
  """Either process may die (process 0 also hosts the coordinator): the other must stop
  within the heartbeat timeout, not wait forever in a collective."""
  workdir = tmp_path / 'run'
  processes, victim, kill_after, overrides = signal_one_process(
      teacher, two_processes, workdir, signal.SIGKILL, STEPS - 4)
  processes[victim].wait()
  survivor = 1 - victim
  try:
    returncode = processes[survivor].wait(timeout=STOP_WITHIN)
  except subprocess.TimeoutExpired:
    pytest.fail(f'process {survivor} still runs {STOP_WITHIN} s after process {victim} died')
  assert returncode != 0
  assert 'another task died' in process_log(workdir, survivor), (
      process_log(workdir, survivor)[-3000:])
  assert max(checkpoint_steps(workdir), default=0) < STEPS, f'killed after step {kill_after}'
  assert_restart_resumes_exactly(workdir, overrides, two_processes)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_checkpointed_step(teacher, two_processes,
                                                                    tmp_path):
  """A preemption notice reaches one host first: JAX's preemption service must bring both
  processes to the same step, checkpoint it, and exit 143 (a flag per process would leave
  one waiting in a collective), and a restart of both must resume exactly."""
  workdir = tmp_path / 'run'
  processes, target, signal_after, overrides = signal_one_process(
      teacher, two_processes, workdir, signal.SIGTERM, STEPS - 6)
  for index, process in enumerate(processes):
    try:
      returncode = process.wait(timeout=STOP_WITHIN)
    except subprocess.TimeoutExpired:
      pytest.fail(f'process {index} still runs {STOP_WITHIN} s after SIGTERM to {target}')
    assert returncode == 143, process_log(workdir, index)[-3000:]
  stopped_at = max(step_losses(workdir))
  assert signal_after <= stopped_at < STEPS
  assert max(checkpoint_steps(workdir)) == stopped_at
  assert_restart_resumes_exactly(workdir, overrides, two_processes)
