"""Bit-identical replay through the whole input pipeline: the augmented image and mixed
target of example i in epoch e are the same bits at any batch size, device count, process
count and start step.

The runs use the whole recipe (RandAugment, colour jitter, erasing, Mixup/CutMix pairs)
on 128 synthetic examples at 32x32 (``replay_run``), once with the per-image ops on the
device and once on the host (``augment_on='host'``: PIL in the loader, the device only
unpacks, normalises and mixes). The reference is global batch 8 on one device over two
whole epochs; every other run of the same ``augment_on`` must give the same bits on every
example it sees. Runs with several devices or processes start fresh interpreters, since
the device count is fixed when JAX starts.
"""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tinyvit_jax.data import order

import replay_run

HERE = os.path.dirname(__file__)


@pytest.fixture(scope='module', params=replay_run.AUGMENT_ON)
def augment_on(request):
  return request.param


@pytest.fixture(scope='module')
def one_device(augment_on):
  """Global batch 8 on one device: two whole epochs (16 steps each)."""
  return replay_run.augmented(8, [(0, 32)], augment_on)


def assert_same_bits(run: dict, reference: dict):
  assert run and set(run) <= set(reference)
  for example, (image, target) in run.items():
    np.testing.assert_array_equal(image, reference[example][0], err_msg=f'image {example}')
    np.testing.assert_array_equal(target, reference[example][1], err_msg=f'target {example}')


def start_runs(tmp_path, devices_per_process: int, num_processes: int = 1, **args) -> list:
  """Starts ``replay_run`` in ``num_processes`` fresh interpreters (one JAX run between
  them), each with ``devices_per_process`` simulated CPU devices."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices_per_process}')
  command = [sys.executable, os.path.join(HERE, 'helpers', 'replay_run.py')]
  command += [f'--{name}={value}' for name, value in args.items()]
  if num_processes > 1:
    with socket.socket() as free:
      free.bind(('127.0.0.1', 0))
      command += [
          f'--coordinator=127.0.0.1:{free.getsockname()[1]}', f'--num_processes={num_processes}'
      ]
  return [
      subprocess.Popen(command + [f'--process_id={k}', f'--out={tmp_path / f"process{k}.npz"}'],
                       env=env, stderr=subprocess.PIPE, text=True) for k in range(num_processes)
  ]


def finish_runs(tmp_path, processes) -> dict:
  """Waits for ``start_runs``' processes; the union of what they saw."""
  seen = {}
  for k, process in enumerate(processes):
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    seen.update(replay_run.load(tmp_path / f'process{k}.npz'))
  return seen


def test_epochs_are_whole_and_mixed(one_device):
  """The reference saw every example in both epochs, and Mixup/CutMix mixed most targets."""
  assert sorted(one_device) == [(e, i, 0) for e in (0, 1) for i in range(replay_run.N)]
  mixed = [(target > 0.02).sum() == 2 for _, target in one_device.values()]
  assert np.mean(mixed) > 0.5


def test_resumed_mid_epoch(one_device, augment_on):
  """Started at step 21 (batch 5 of epoch 1), the run replays the reference."""
  resumed = replay_run.augmented(8, [(21, 5)], augment_on)
  positions = order.epoch_permutation(replay_run.SEED, 1, replay_run.N)[40:80]
  assert sorted(resumed) == sorted((1, int(i), 0) for i in positions)
  assert_same_bits(resumed, one_device)


@pytest.mark.slow
def test_in_two_loader_workers(one_device, augment_on):
  """The host ops in two grain worker processes, resumed at step 21, replay the reference."""
  if augment_on != 'host':
    pytest.skip('with augment_on="device" the workers only crop, as in the host path')
  assert_same_bits(replay_run.augmented(8, [(21, 5)], augment_on, num_workers=2), one_device)


@pytest.mark.slow
def test_batch_64_on_8_devices(tmp_path, one_device, augment_on):
  run = finish_runs(tmp_path,
                    start_runs(tmp_path, 8, global_batch=64, spans='0:4', augment_on=augment_on))
  assert len(run) == 2 * replay_run.N
  assert_same_bits(run, one_device)


@pytest.mark.slow
def test_two_processes_resumed_mid_epoch(tmp_path, one_device, augment_on):
  """Two JAX processes of 2 devices each (16 examples per device, not 8), started at
  step 1, the second half of epoch 0."""
  run = finish_runs(
      tmp_path,
      start_runs(tmp_path, 2, num_processes=2, global_batch=64, spans='1:3', augment_on=augment_on))
  assert len(run) == replay_run.N + replay_run.N // 2
  assert_same_bits(run, one_device)


def test_odd_batch_per_device_with_mixup_names_the_numbers():
  """Global batch 24 on 8 devices is 3 per device: a pair would straddle two devices."""
  code = ('import replay_run\n'
          'from tinyvit_jax.data import pipeline\n'
          'pipeline.make_input_pipeline(replay_run.source(), replay_run.AUG, seed=0, '
          'global_batch=24)\n')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=os.path.join(HERE, 'helpers'),
                          env=dict(os.environ, JAX_PLATFORMS='cpu',
                                   XLA_FLAGS='--xla_force_host_platform_device_count=8'))
  assert result.returncode != 0
  assert ('per-device batch must be even, but global batch 24 over 8 devices gives 3'
          in result.stderr), result.stderr


@pytest.fixture(scope='module')
def repeated_one_device():
  """Three views per example (stride 8) at global batch 6 on one device: 126 // 6 = 21
  steps cover epoch 0 whole, device-side augmentation."""
  return replay_run.augmented(6, [(0, 21)], repeats=replay_run.REPEATED)


def test_repeated_augmentation_gives_r_different_views_of_each_example(repeated_one_device):
  epoch = order.epoch_length(replay_run.N, replay_run.REPEATED)
  distinct = order.epoch_permutation(replay_run.SEED, 0, replay_run.N)[:epoch // 3]
  assert sorted(repeated_one_device) == sorted((0, int(i), r) for i in distinct for r in range(3))
  for index in distinct:
    views = [repeated_one_device[0, index, r][0] for r in range(3)]
    for a, b in ((0, 1), (0, 2), (1, 2)):
      assert np.abs(views[a] - views[b]).mean() > 0.05, (index, a, b)


def test_repeated_views_replay_after_a_resume(repeated_one_device):
  resumed = replay_run.augmented(6, [(9, 3)], repeats=replay_run.REPEATED)
  assert len(resumed) == 18
  assert_same_bits(resumed, repeated_one_device)


@pytest.mark.slow
def test_repeated_views_are_the_same_on_8_devices(tmp_path, repeated_one_device):
  """Global batch 48 on 8 devices (6 each, under the stride of 8): the two steps of
  epoch 0 give the bits of the one-device run."""
  run = finish_runs(tmp_path, start_runs(tmp_path, 8, global_batch=48, spans='0:2', repeated=1))
  assert len(run) == 96
  assert_same_bits(run, repeated_one_device)
