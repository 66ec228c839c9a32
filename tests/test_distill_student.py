"""The store-fed student: every batch's rows line up at any batch size, device count and
resume point; its targets are the store's rebuild; mismatches, damage and a changed
setup are named; ``verify`` passes a true store and fails another teacher's.

The store is ``save_pass_run``'s: written by one process at batch 32.
"""
import json
import os
import shutil
import subprocess
import sys

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinyvit_jax.data import order
from tinyvit_jax.data import pipeline
from tinyvit_jax.distill import store
from tinyvit_jax.distill import student
from tinyvit_jax.distill import verify
from tinyvit_jax.train import config as config_lib

import official_targets
import save_pass_run as run

HERE = os.path.dirname(__file__)


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('fpd') / 'store')
  run.save(path, global_batch=32)
  return path


def assert_aligned_with_store(seen: dict, path: str):
  """Each (epoch, position) row a student saw is the store's, for the example the
  epoch's order puts there."""
  logits = store.LogitStore.open(path)
  for (epoch, position), (index, values, indices) in seen.items():
    assert index == order.epoch_permutation(run.SEED, epoch, run.N)[position]
    stored = logits.read(epoch, position, 1)
    np.testing.assert_array_equal(values, stored[0][0])
    np.testing.assert_array_equal(indices, stored[1][0])
    assert stored[2][0] == index


@pytest.mark.slow
def test_batch_64_on_8_devices_reads_every_row_aligned(saved, tmp_path):
  out = tmp_path / 'rows.npz'
  result = subprocess.run([
      sys.executable,
      os.path.join(HERE, 'helpers', 'save_pass_run.py'), f'--store={saved}', f'--read_out={out}',
      '--global_batch=64', '--num_steps=4'
  ], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS='cpu',
                                   PYTHONPATH=os.path.dirname(HERE),
                                   XLA_FLAGS='--xla_force_host_platform_device_count=8'))
  assert result.returncode == 0, result.stderr
  rows = np.load(out)
  seen = {
      (int(e), int(p)): (int(i), v, t) for (
          e,
          p), i, v, t in zip(rows['epoch_position'], rows['index'], rows['values'], rows['indices'])
  }
  assert sorted(seen) == [(e, p) for e in (0, 1) for p in range(128)]  # 2 steps an epoch
  assert_aligned_with_store(seen, saved)


def test_a_run_resumed_mid_epoch_reads_every_row_aligned(saved):
  """Batch 16 from step 5 (positions 80.. of epoch 0) into epoch 1 (9 steps an epoch)."""
  seen = run.student_rows(saved, global_batch=16, start_step=5, num_steps=6)
  assert sorted(seen) == [(0, p) for p in range(80, 144)] + [(1, p) for p in range(32)]
  assert_aligned_with_store(seen, saved)


def test_an_index_mismatch_names_the_epoch_and_position(saved):
  hook = student.StoreTargets(saved, run.student_fields())
  permutation = order.epoch_permutation(run.SEED, 1, run.N)
  batch = dict(epoch=np.ones(8, np.int64), position=np.arange(40, 48),
               index=permutation[40:48].copy())
  assert hook(batch)['teacher_values'].shape == (8, run.K)
  batch['index'][[3, 5]] = batch['index'][[5, 3]]
  with pytest.raises(
      student.StoreMismatchError,
      match=f'epoch 1, position 43: .* holds example {permutation[43]}, but '
      f'this run.s order has example {permutation[45]} there \\(2 of 8'):
    hook(batch)


@pytest.mark.parametrize('change, field', [
    (dict(seed=6), 'seed: store 5, student 6'),
    (dict(aug_config=dict(run.AUG, erase_prob=0.0)),
     'augmentation.erase_prob: store 0.25, student 0.0'),
    (dict(source=run.source(seed=1)), 'dataset_fingerprint: store'),
    (dict(k=4), 'k: store 5, student 4'),
    (dict(num_classes=10), 'num_classes: store 12, student 10'),
])
def test_a_student_with_another_setup_is_refused_naming_the_field(saved, change, field):
  with pytest.raises(ValueError, match='does not match this student') as error:
    student.StoreTargets(saved, run.student_fields(**change))
  assert field in str(error.value)


def test_a_bounded_store_is_its_first_epochs_replayed_by_the_schedule(saved, tmp_path):
  """views_per_example=2: the save pass stores epochs 0 and 1, byte for byte those of a
  per-epoch store; a student resumed at step 3 replays them whole in the keyed order
  (every batch's rows line up, checked by the hook), and a student without the bound is
  refused naming the field."""
  bounded = str(tmp_path / 'bounded')
  run.save(bounded, views=2)
  for epoch in (0, 1):
    folder = f'epoch_{epoch:05d}'
    assert sorted(os.listdir(os.path.join(bounded, folder))) == sorted(
        os.listdir(os.path.join(saved, folder)))
    for name in os.listdir(os.path.join(saved, folder)):
      with open(os.path.join(saved, folder, name),
                'rb') as a, open(os.path.join(bounded, folder, name), 'rb') as b:
        assert a.read() == b.read()
  assert store.LogitStore.open(bounded).manifest['views_per_example'] == 2
  hook = student.StoreTargets(bounded, run.student_fields(views=2))
  steps = pipeline.make_input_pipeline(run.source(), run.AUG, seed=run.SEED, global_batch=64,
                                       host_hook=hook, start_step=3, num_steps=9, views=2)
  stored = [int(run.local_rows(batch['epoch'])[0]) for batch in steps.batches]
  # 2 steps an epoch: steps 3..11 are student epochs 1, 2, 2, 3, 3, 4, 4, 5, 5.
  assert stored == [order.stored_epoch(run.SEED, step // 2, 2) for step in range(3, 12)]
  assert sorted(stored[1:5]) == [0, 0, 1, 1] and sorted(stored[5:9]) == [0, 0, 1, 1]
  with pytest.raises(ValueError, match='views_per_example: store 2, student 0'):
    student.StoreTargets(bounded, run.student_fields())


@pytest.mark.parametrize('damage', ['truncate', 'flip'])
def test_a_damaged_chunk_names_the_epoch_and_rows(saved, tmp_path, damage):
  """Chunk 4 of epoch 1 holds rows [128, 150)."""
  path = tmp_path / 'store'
  shutil.copytree(saved, path)
  chunk = store.LogitStore.open(str(path)).chunk_path(1, 4)
  with open(chunk, 'r+b') as f:
    if damage == 'truncate':
      f.truncate(os.path.getsize(chunk) - 3)
    else:
      f.seek(40)
      byte = f.read(1)
      f.seek(40)
      f.write(bytes([byte[0] ^ 1]))
  hook = student.StoreTargets(str(path), run.student_fields())
  batch = dict(epoch=np.ones(4, np.int64), position=np.arange(130, 134),
               index=order.epoch_permutation(run.SEED, 1, run.N)[130:134])
  with pytest.raises(store.CorruptChunkError, match=r'epoch 1, rows \[128, 150\)'):
    hook(batch)


@hypothesis.settings(deadline=None, max_examples=20)
@hypothesis.given(seed=st.integers(0, 2**31), k=st.integers(1, 12))
def test_the_fpd_students_targets_are_the_official_rebuilds_of_its_stored_rows(seed, k):
  """``make_inputs`` from a store: FPD's target is the stored top-k rebuilt dense, as the
  official code rebuilds it (float32 sums against float64 ones: a few ulps; a wrong
  rebuild is off by percents); DeiT's keeps the rows for its loss, beside the labels."""
  rng = np.random.default_rng(seed)
  probs = rng.dirichlet(np.full(12, 0.3), size=6)
  indices = np.argsort(-probs, axis=1)[:, :k].astype(np.uint16)
  values = np.take_along_axis(probs, indices.astype(int), axis=1).astype(np.float16)
  batch = dict(image=jnp.zeros((6, 4, 4, 3)), label=jnp.arange(6),
               teacher_values=jnp.asarray(values), teacher_indices=jnp.asarray(indices))
  config = config_lib.base_config()
  config.num_classes = 12
  config.distill.update(kind='fpd', from_store=True)

  def device_augment(batch, labels):
    return batch['image'], jax.nn.one_hot(batch['label'], 12) if labels else None

  inputs = jax.jit(student.make_inputs(config, device_augment))
  _, fpd = inputs(batch, None)
  assert list(fpd) == ['teacher']
  np.testing.assert_allclose(fpd['teacher'], official_targets.dense(values, indices, 12), rtol=1e-5,
                             atol=k * 2**-24)
  config.distill.kind = 'soft'
  _, deit = student.make_inputs(config, device_augment)(batch, None)
  assert sorted(deit) == ['labels', 'teacher_indices', 'teacher_values']
  np.testing.assert_array_equal(deit['labels'], jax.nn.one_hot(np.arange(6), 12))


def test_verify_passes_the_true_teacher_and_fails_another(saved, capsys):
  source = run.source()
  figures = verify.verify(saved, run.linear_teacher(), source, sample=48, batch=16)
  assert figures['rows'] == 48 and figures['top1_agreement'] == 1.0
  assert figures['mean_abs_diff'] < 2**-11
  assert 'top-1 agreement 1.0000' in capsys.readouterr().out
  with pytest.raises(verify.VerificationError, match='disagrees with the teacher linear1'):
    verify.verify(saved, run.linear_teacher(seed=1), source, sample=48, batch=16)
  with pytest.raises(ValueError, match='dataset_fingerprint'):
    verify.verify(saved, run.linear_teacher(), run.source(seed=1), sample=8, batch=16)


def test_verify_lists_every_damaged_chunk(saved, tmp_path):
  path = tmp_path / 'store'
  shutil.copytree(saved, path)
  logits = store.LogitStore.open(str(path))
  os.remove(logits.chunk_path(0, 1))
  with open(logits.chunk_path(1, 3), 'r+b') as f:
    f.seek(40)
    byte = f.read(1)
    f.seek(40)
    f.write(bytes([byte[0] ^ 1]))
  with pytest.raises(verify.VerificationError, match='has 2 unusable chunks') as error:
    verify.verify(str(path), run.linear_teacher(), run.source(), sample=8, batch=16)
  assert (f'epoch 0, rows [32, 64): chunk {logits.chunk_path(0, 1)} is unusable: it does '
          'not exist' in str(error.value))
  assert (f'epoch 1, rows [96, 128): chunk {logits.chunk_path(1, 3)} is unusable: its '
          'checksum does not match' in str(error.value))


def test_fpd_benchmark_quick_run_reports_its_figures(tmp_path):
  """benchmarks/fpd.py --quick, the store parts: sizes under the target, reads positive."""
  out = tmp_path / 'fpd.json'
  subprocess.run([
      sys.executable,
      os.path.join(os.path.dirname(HERE), 'benchmarks', 'fpd.py'), '--quick', '--parts=ad',
      f'--json={out}'
  ], check=True, timeout=300, capture_output=True, env=dict(os.environ,
                                                            PYTHONPATH=os.path.dirname(HERE)))
  report = json.loads(out.read_text())
  for k in (10, 100):
    size = report['bytes'][f'k{k}']
    assert size['official'] == pytest.approx(4 + 4 * k + 18e9 / (90 * 13.2e6))
    assert size['ours_over_official'] < 0.9
  assert all(rate > 0 for rate in report['read']['hook_rows_per_s']['runs'])
