"""``jax.distributed`` for real: 2 processes on a loopback coordinator, 2 CPU devices each.

Every run is ``python -m tinyvit_jax.main --config=tests/helpers/train_config_fpd.py``: the FPD
save pass of a random-init teacher's top-3 rows (each process writes its own block of the
store), then one epoch (22 steps at batch 64) of the system tests' student trained from the
store, each process loading its half of every batch and reading its rows of the store.
Two such processes, stopped by a SIGTERM to one of them, restarted, then stopped by
killing one of them (JAX's heartbeat, ``main --heartbeat_timeout``, must then stop the
other) and restarted again, must do what one uninterrupted process with all 4 devices
does. (A 2-process run of its own, uninterrupted, would cost a minute more and tell apart
only which of the two broke. Eight devices against one are tests/test_train_system.py's;
here the process boundary is the subject, and 2 devices a process still split each
process's slice.)
"""
import os
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from flax import nnx

import train_config_fpd
from test_train_system import digits_store
from workdirs import REPO, STEPS, checkpoint_steps, environment, examples_seen, step_losses
from workdirs import resumed_from, store_files
from tinyvit_jax import model_checkpoint
from tinyvit_jax.data import order
from tinyvit_jax.data import sources
from tinyvit_jax.distill import manifest
from tinyvit_jax.distill import store
from tinyvit_jax.distill.teachers import factory
from tinyvit_jax.models import create_model
from tinyvit_jax.train import metrics

CONFIG = 'tests/helpers/train_config_fpd.py'
HEARTBEAT_TIMEOUT = 10  # seconds; JAX's default, 100, would only make the test slower
STOP_WITHIN = 60  # seconds from a kill to the other process's exit, load included
DEVICES_PER_PROCESS = 2
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
  config = train_config_fpd.get_config()
  kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in config.model.kwargs.items()}
  model = create_model(config.model.name, num_classes=config.num_classes, rngs=nnx.Rngs(7),
                       **kwargs)
  directory = str(tmp_path_factory.mktemp('teacher') / 'export')
  model_checkpoint.save_model(directory, model, config.model.name, num_classes=config.num_classes,
                              **kwargs)
  return directory


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start_processes(
    workdir, *overrides, heartbeat_timeout: int = HEARTBEAT_TIMEOUT,
    process_1_prefix: tuple = ()) -> list:
  """Both processes of a 2-process run, logging to ``workdir/../<name>.process<i>.log``;
  process 1's command starts with ``process_1_prefix``."""
  address = f'127.0.0.1:{free_port()}'
  processes = []
  for index in range(2):
    env = dict(environment(devices=DEVICES_PER_PROCESS), JAX_COORDINATOR_ADDRESS=address,
               JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(index))
    log = open(f'{workdir}.process{index}.log', 'a')
    processes.append(
        subprocess.Popen([
            *(process_1_prefix if index else ()), sys.executable, '-m', 'tinyvit_jax.main',
            f'--config={CONFIG}', f'--workdir={workdir}', '--distributed',
            f'--heartbeat_timeout={heartbeat_timeout}', *overrides
        ], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    log.close()
  _STARTED.extend(processes)
  return processes


def process_log(workdir, index: int) -> str:
  with open(f'{workdir}.process{index}.log') as f:
    return f.read()


def finish(processes, workdir) -> None:
  for index, process in enumerate(processes):
    assert process.wait(timeout=900) == 0, process_log(workdir, index)[-3000:]


@pytest.fixture(scope='module')
def one_process(teacher, tmp_path_factory):
  """The reference: one process holding all the devices of both."""
  workdir = tmp_path_factory.mktemp('one') / 'run'
  result = subprocess.run([
      sys.executable, '-m', 'tinyvit_jax.main', f'--config={CONFIG}', f'--workdir={workdir}',
      f'--config.distill.teacher={teacher}'
  ], cwd=REPO, env=environment(devices=2 * DEVICES_PER_PROCESS), capture_output=True, text=True,
                          timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  return workdir


def wait_for_steps(processes, workdir, steps: int) -> None:
  deadline = time.time() + 600
  while len(step_losses(workdir)) < steps:
    assert all(p.poll() is None for p in processes), process_log(workdir, 0)[-3000:]
    assert time.time() < deadline, 'the run made no progress'
    time.sleep(0.05)


@pytest.fixture(scope='module')
def two_processes(teacher, tmp_path_factory):
  """One 2-process run, save pass included, that meets both ways a run stops:
  1. a SIGTERM (a preemption notice) reaches one process first: JAX's preemption service
     must bring both to the same step, checkpoint it, and exit 143 (a flag per process
     would leave one waiting in a collective);
  2. after a restart of both, one process is killed (either may die; process 0 also hosts
     the coordinator): the other must stop within the heartbeat timeout, not wait forever;
  3. a restart of both then finishes.
  The steps at which it is signalled, and which process, are drawn at run time."""
  workdir = tmp_path_factory.mktemp('two') / 'run'
  overrides = (f'--config.distill.teacher={teacher}',)
  draw = random.Random()  # drawn now, not chosen in advance

  processes = start_processes(workdir, *overrides)
  term_after, target = draw.randint(6, 10), draw.randint(0, 1)
  wait_for_steps(processes, workdir, term_after)
  processes[target].send_signal(signal.SIGTERM)
  for index, process in enumerate(processes):
    try:
      returncode = process.wait(timeout=STOP_WITHIN)
    except subprocess.TimeoutExpired:
      pytest.fail(f'process {index} still runs {STOP_WITHIN} s after SIGTERM to {target}')
    assert returncode == 143, process_log(workdir, index)[-3000:]
  stopped_at = max(step_losses(workdir))
  assert term_after <= stopped_at < STEPS
  assert max(checkpoint_steps(workdir)) == stopped_at

  processes = start_processes(workdir, *overrides)
  kill_after = draw.randint(min(stopped_at + 2, STEPS - 3), STEPS - 3)
  victim = draw.randint(0, 1)
  wait_for_steps(processes, workdir, kill_after)
  processes[victim].send_signal(signal.SIGKILL)
  processes[victim].wait()
  survivor = 1 - victim
  try:
    returncode = processes[survivor].wait(timeout=STOP_WITHIN)
  except subprocess.TimeoutExpired:
    pytest.fail(f'process {survivor} still runs {STOP_WITHIN} s after process {victim} died')
  assert returncode != 0
  # JAX's heartbeat says "another task died"; a CPU collective under way when the peer
  # died fails sooner, its socket reset or closed (Gloo's "Connection reset by peer" or
  # "Connection closed by peer", as the kill lands).
  survivor_log = process_log(workdir, survivor)
  assert any(cause in survivor_log
             for cause in ('another task died', 'Connection reset by peer',
                           'Connection closed by peer')), (survivor_log[-3000:])
  assert max(checkpoint_steps(workdir)) < STEPS, f'killed after step {kill_after}'
  last_saved = max(checkpoint_steps(workdir))

  finish(start_processes(workdir, *overrides), workdir)
  assert resumed_from(workdir) == last_saved >= stopped_at
  return workdir


@pytest.mark.slow
def test_two_processes_stopped_twice_equal_one_with_all_their_devices(one_process, two_processes):
  one, two = step_losses(one_process), step_losses(two_processes)
  assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([two[s] for s in sorted(two)], [one[s] for s in sorted(one)], rtol=0,
                             atol=1e-5)
  assert examples_seen(two_processes) == examples_seen(one_process)
  assert [row['step'] for row in examples_seen(two_processes)] == list(range(1, STEPS + 1))
  # Each process saved its own block of the store: together, the one process's bytes.
  assert (store_files(os.path.join(two_processes,
                                   'logits')) == store_files(os.path.join(one_process, 'logits')))
  # The final state is checked through its eval loss: weight by weight, Adam turns the
  # other order of the sums over 2 processes into gaps of a whole step on weights whose
  # gradient is near 0. (Resuming bit for bit is tested in one process, in
  # tests/test_train_system.py.)
  evals = [[row
            for row in metrics.read_metrics(w)
            if 'eval_top1' in row]
           for w in (one_process, two_processes)]
  assert [r['eval_examples'] for r in evals[0]] == [r['eval_examples'] for r in evals[1]]
  np.testing.assert_allclose([r['eval_loss'] for r in evals[1]], [r['eval_loss'] for r in evals[0]],
                             rtol=0, atol=1e-5)


def stop_times(processes, timeout: float = 600) -> list:
  """Each process's exit status and the time it was seen to exit."""
  deadline, stopped = time.time() + timeout, {}
  while len(stopped) < len(processes):
    assert time.time() < deadline, 'a process still runs'
    for index, process in enumerate(processes):
      if index not in stopped and process.poll() is not None:
        stopped[index] = (process.returncode, time.time())
    time.sleep(0.05)
  return [stopped[index] for index in range(len(processes))]


SMALL_VIT = 'vit_base_patch16_clip_224'  # in miniature: a save pass that starts fast
SMALL_VIT_KWARGS = dict(num_classes=10, img_size=32, patch_size=8, embed_dim=32, depth=1,
                        num_heads=2)


@pytest.mark.slow
def test_a_fault_on_process_1_stops_both_with_its_line(tmp_path, small_disk):
  """Two faults only process 1 meets: a damaged chunk only it reads (rows [32, 64), its half
  of step 1), then a full disk only it writes to (its own mount over the store's epoch
  folder, as a host's local disk would be). Each time both processes exit 1 within 10 s of
  each other, their last line the same: process 1's, naming it and its host. The
  heartbeat timeout is 60 s here, so only the fault's broadcast stops process 0 in time."""
  named = f'error: process 1 of 2 (host {socket.gethostname()}): '
  logits = digits_store(str(tmp_path / 'store'), chunk_rows=32)
  damaged = logits.chunk_path(0, 1)
  with open(damaged, 'r+b') as f:
    f.seek(40)
    f.write(bytes([f.read(1)[0] ^ 1]))
  teacher = str(tmp_path / 'vit')
  model_checkpoint.save_model(teacher, create_model(SMALL_VIT, rngs=nnx.Rngs(0),
                                                    **SMALL_VIT_KWARGS), SMALL_VIT,
                              **SMALL_VIT_KWARGS)
  config = train_config_fpd.get_config()
  with config.unlocked():
    config.distill.teacher = teacher
  saved = factory.make_teacher(config.distill, config.aug, config.num_classes)
  source = sources.from_config(config.data, 'train')
  full = store.LogitStore.create(
      str(tmp_path / 'full'),
      manifest.store_fields(source, dataset_name=config.data.source, aug_config=config.aug,
                            seed=config.seed, k=3, teacher=saved,
                            repeats=order.repeats_of(config.data)), chunk_rows=32)
  folder = os.path.dirname(full.chunk_path(0, 0))
  os.makedirs(folder)
  small_disk.fill()
  mount_over_folder = ('unshare', '-m', '--propagation', 'private', 'sh', '-c',
                       f'mount --bind {small_disk.path} {folder} && exec "$@"', 'sh')
  for index, (store_path, expected, prefix) in enumerate(
      ((logits.path, f'epoch 0, rows [32, 64): chunk {damaged} is unusable: ', ()),
       (full.path, f'no space left writing {full.chunk_path(0, full.owned_chunks(1, 2)[0])} '
        '(0 bytes free)', mount_over_folder))):
    workdir = tmp_path / f'run{index}'
    processes = start_processes(workdir, f'--config.distill.teacher={teacher}',
                                f'--config.distill.store={store_path}',
                                '--mode=train' if index == 0 else '--mode=save_logits',
                                heartbeat_timeout=60, process_1_prefix=prefix)
    (status_0, stopped_0), (status_1, stopped_1) = stop_times(processes)
    lines = [process_log(workdir, i).strip().splitlines()[-1] for i in range(2)]
    assert status_0 == status_1 == 1, lines
    assert lines[0] == lines[1] and lines[0].startswith(named + expected), lines
    assert abs(stopped_0 - stopped_1) < 10
