"""The FPD save pass: its rows are the online teacher's, it resumes byte-identically after
SIGKILL, several writer processes give the bytes of one, and bad input is named.

Runs use ``save_pass_run``: 150 synthetic examples at 32x32 with the whole augmentation
recipe (Mixup/CutMix included), a linear teacher over 12 classes, k = 5, chunks of 32
rows (so an epoch's last chunk is short: 150 = 4 * 32 + 22), two epochs.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tinyvit_jax.data import order
from tinyvit_jax.data import pipeline
from tinyvit_jax.distill import manifest
from tinyvit_jax.distill import store
from tinyvit_jax.distill import student
from tinyvit_jax.distill import targets

import save_pass_run as run
from workdirs import store_files

HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(HERE)


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """One process at batch 32: the reference store."""
  path = str(tmp_path_factory.mktemp('fpd') / 'store')
  run.save(path)
  return path


def assert_same_files(path: str, reference: str):
  got, want = store_files(path), store_files(reference)
  assert sorted(got) == sorted(want)
  assert all(got[name] == want[name] for name in want), [n for n in want if got[n] != want[n]]


def test_every_position_of_every_epoch_is_stored_in_order(saved):
  logits = store.LogitStore.open(saved)
  assert logits.epochs_done == [0, 1]
  for epoch in (0, 1):
    values, indices, example = logits.read(epoch, 0, run.N)
    np.testing.assert_array_equal(example, order.epoch_permutation(run.SEED, epoch, run.N))
    assert values.dtype == np.float16 and indices.dtype == np.uint16
    assert np.all(np.diff(values.astype(np.float32), axis=1) <= 0)
    assert np.all(values.astype(np.float32).sum(axis=1) <= 1 + 1e-2)


def test_store_equals_the_online_teacher_at_every_step(saved):
  """A student fed by the store gets, at each step, the targets the teacher gives online
  on that step's (augmented, mixed) images, within float16 rounding."""
  steps = pipeline.make_input_pipeline(run.source(), run.AUG, seed=run.SEED, global_batch=16,
                                       num_steps=12,
                                       host_hook=student.StoreTargets(saved, run.student_fields()))
  assert order.steps_per_epoch(run.N, 16) == 9  # so the 12 steps cross into epoch 1
  assert_online_teacher_targets(steps)


def assert_online_teacher_targets(steps: pipeline.InputPipeline):
  """Each step's stored targets are the teacher's on that step's images (mixed ones too)."""
  teacher = run.linear_teacher()
  mixed = count = 0
  for count, batch in enumerate(steps.batches, 1):
    images, _ = steps.device_augment(batch)
    online = teacher.probabilities(images)
    values, indices = jax.lax.top_k(online, run.K)
    np.testing.assert_array_equal(batch['teacher_indices'], indices)
    np.testing.assert_allclose(np.asarray(batch['teacher_values'], np.float32), values, rtol=2**-11,
                               atol=2**-25)
    np.testing.assert_allclose(
        targets.dense_targets(batch['teacher_values'], batch['teacher_indices'], run.CLASSES),
        targets.dense_targets(values, indices, run.CLASSES), rtol=2**-10, atol=2**-11 /
        (run.CLASSES - run.K))
    # The stored rows are of the mixed images: the two members of a pair differ.
    mixed += int(np.sum(np.asarray(images)[0::2] != np.asarray(images)[1::2]) > 0)
  assert count and mixed > count // 2


def test_repeated_views_are_rows_of_their_own(tmp_path):
  """Under 3-fold repeated augmentation the 150 positions of an epoch hold 50 examples
  three times; each view is a row with the teacher's targets on that view, and a
  student without the same repeats is refused."""
  repeats = order.Repeats(3, 8)
  path = str(tmp_path / 'store')
  run.save(path, epochs=1, repeats=repeats)
  values, _, example = store.LogitStore.open(path).read(0, 0, run.N)
  counts = np.bincount(example, minlength=run.N)
  assert (counts == 3).sum() == 50 and (counts == 0).sum() == 100
  first = np.flatnonzero(example == example[0])
  assert not np.array_equal(values[first[0]], values[first[1]])  # two views, two rows
  steps = pipeline.make_input_pipeline(
      run.source(), run.AUG, seed=run.SEED, global_batch=24, num_steps=6, repeats=repeats,
      host_hook=student.StoreTargets(path, run.student_fields(repeats=repeats)))
  assert_online_teacher_targets(steps)
  with pytest.raises(ValueError, match='repeats.count: store 3, student 1'):
    student.StoreTargets(path, run.student_fields())


def test_k_above_the_class_count_is_a_config_error(tmp_path):
  with pytest.raises(ValueError, match='k=13 must be between 1 and the teacher.s class count '
                     'C=12'):
    run.save(str(tmp_path / 'store'), k=13)
  assert not os.path.exists(tmp_path / 'store')


@pytest.mark.parametrize('change, field', [
    (dict(seed=6), 'seed: store 5, student 6'),
    (dict(aug_config=dict(run.AUG, mixup_alpha=0.5)),
     'augmentation.mixup_alpha: store 0.8, student 0.5'),
    (dict(source=run.source(seed=1)), 'dataset_fingerprint: store'),
    (dict(source=run.source(n=run.N - 2)), 'dataset_size: store 150, student 148'),
    (dict(dataset_name='digits'), "dataset_name: store 'synthetic', student 'digits'"),
])
def test_resuming_with_other_data_or_augmentation_is_refused(saved, change, field):
  with pytest.raises(ValueError, match='does not match this student') as error:
    run.save(saved, **change)
  assert field in str(error.value)


def test_resuming_with_another_teacher_is_refused(saved):
  with pytest.raises(ValueError, match="teacher_name: store 'linear0', this save 'linear1'"):
    run.save(saved, teacher=run.linear_teacher(seed=1))


def test_a_nan_teacher_stops_naming_the_batch_and_earlier_chunks_stay_valid(tmp_path, saved):
  """The 4th batch (positions 96..127 of epoch 0) gets a NaN; chunks 0-2 are committed.
  A rerun with a sound teacher resumes and gives the reference's bytes."""
  path = str(tmp_path / 'store')
  with pytest.raises(
      FloatingPointError, match=r'epoch 0: .* positions 96\.\.127 \(first at '
      r'position 96, example \d+\)'):
    run.save(path, teacher=run.linear_teacher(nan_at_call=3))
  logits = store.LogitStore.open(path)
  assert logits.epochs_done == [] and logits.missing_chunks(0) == [3, 4]
  run.save(path)
  assert_same_files(path, saved)


def test_the_readme_repair_of_damaged_chunks_resaves_their_bytes(tmp_path, saved):
  """README, "When things go wrong": delete the damaged chunks, drop their epoch from
  ``epochs_done`` and rerun the save pass; only those chunks are saved again."""
  path = str(tmp_path / 'store')
  shutil.copytree(saved, path)
  logits = store.LogitStore.open(path)
  with open(logits.chunk_path(1, 2), 'r+b') as f:
    f.write(b'XXXX')
  assert len(logits.damaged_chunks()) == 1
  os.remove(logits.chunk_path(1, 2))
  manifest = json.loads(open(os.path.join(path, 'manifest.json')).read())
  manifest['epochs_done'].remove(1)
  with open(os.path.join(path, 'manifest.json'), 'w') as f:
    json.dump(manifest, f)
  run.save(path)
  assert_same_files(path, saved)


def subprocess_env(devices: int = 1) -> dict:
  return dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT,
              XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')


def start(store_path, *args, devices: int = 1):
  return subprocess.Popen([
      sys.executable,
      os.path.join(HERE, 'helpers', 'save_pass_run.py'), f'--store={store_path}', *args
  ], env=subprocess_env(devices), stderr=subprocess.PIPE, text=True)


def wait(process):
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr


@pytest.mark.slow
def test_sigkilled_save_resumes_byte_identical(tmp_path, saved):
  """Killed with its 7th chunk (epoch 1, chunk 1) fsynced but not renamed, then rerun at
  another batch size on 2 devices: the files equal the uninterrupted save's."""
  path = tmp_path / 'store'
  process = start(path, '--stall_at=6')
  deadline = time.time() + 300
  while not (path / 'stalled').exists():
    assert process.poll() is None and time.time() < deadline, process.stderr.read()
    time.sleep(0.1)
  process.send_signal(signal.SIGKILL)
  process.wait()
  os.remove(path / 'stalled')
  logits = store.LogitStore.open(str(path))
  assert logits.epochs_done == [0]
  assert logits.missing_chunks(1) == [1, 2, 3, 4]
  assert os.path.exists(logits.chunk_path(1, 1) + '.tmp')  # half-written, never read
  wait(start(path, '--global_batch=64', devices=2))
  assert_same_files(str(path), saved)


@pytest.mark.slow
def test_two_concurrent_writer_processes_equal_one(tmp_path, saved):
  """Two JAX processes (global batch 64: 32 each, as the single writer) write their own
  blocks of each epoch at once; the store's bytes are the single writer's."""
  path = tmp_path / 'store'
  with socket.socket() as free:
    free.bind(('127.0.0.1', 0))
    coordinator = f'--coordinator=127.0.0.1:{free.getsockname()[1]}'
  processes = [
      start(path, '--global_batch=64', coordinator, '--num_processes=2', f'--process_id={k}')
      for k in range(2)
  ]
  for process in processes:
    wait(process)
  assert_same_files(str(path), saved)


def test_store_fields_name_every_manifest_field():
  fields = run.student_fields()
  assert set(fields) == set(manifest.STUDENT_FIELDS)
  assert fields['augmentation']['mixup_alpha'] == 0.8  # defaults filled in
  assert fields['augmentation']['image_size'] == 32
  full = manifest.store_fields(run.source(), dataset_name='synthetic', aug_config=run.AUG,
                               seed=run.SEED, k=run.K, teacher=run.linear_teacher())
  assert set(full) == set(manifest.META_FIELDS) and full['num_classes'] == run.CLASSES
  with pytest.raises(ValueError, match=r"Unknown augmentation settings \['mixup'\]"):
    run.student_fields(aug_config=dict(mixup=0.1))


def test_position_batches_are_trainings_examples_padded_at_the_end():
  """Positions 96..149 of epoch 1 at batch 16: the same (index, key, image) as training
  has there, then the last position repeated and masked out."""
  from tinyvit_jax.data import augment
  from tinyvit_jax.data import loader
  host = augment.make_train_augment(run.AUG).host
  source = run.source()
  trained = {}
  for batch in loader.train_batches(source, seed=run.SEED, global_batch=6, transform=host,
                                    start_step=25 + 16, num_steps=9):  # positions 96..149
    trained.update({
        int(p): (i, k, x)
        for p, i, k, x in zip(batch['position'], batch['index'], batch['key'], batch['image'])
    })
  batches = list(
      loader.position_batches(source, seed=run.SEED, epoch=1, positions=range(96, 150), batch=16,
                              transform=host))
  assert len(batches) == 4
  rows = {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}
  np.testing.assert_array_equal(rows['position'], np.r_[96:150, [149] * 10])
  np.testing.assert_array_equal(rows['mask'], np.arange(64) < 54)
  assert set(rows['epoch']) == {1}
  for row, position in enumerate(rows['position']):
    index, key, image = trained[int(position)]
    assert rows['index'][row] == index
    np.testing.assert_array_equal(rows['key'][row], key)
    np.testing.assert_array_equal(rows['image'][row], image)
