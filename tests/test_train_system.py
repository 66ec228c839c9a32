"""The training system end to end, in real processes: device counts, kills, SIGTERM, refusals.

Every run is ``python -m tinyvit_jax.main --config=tests/helpers/train_config.py``: one epoch (22
steps at batch 64) of the quickstart's 0.5M-parameter student on the digits, with each
step's loss and example indices logged.
"""
import json
import os
import random
import signal
import subprocess

import numpy as np
import pytest

import train_config
from workdirs import REPO, STEPS, checkpoint_steps, environment, examples_seen
from workdirs import error_line, final_state, main_command, main_in_process, resumed_from
from workdirs import run_main, step_losses, wait_for_steps
import made_up_rows
from tinyvit_jax import main
from tinyvit_jax.data import order
from tinyvit_jax.data import sources
from tinyvit_jax.distill import manifest
from tinyvit_jax.distill import store
from tinyvit_jax.train import workdir_lock


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
  """Run A: one uninterrupted epoch on 1 device."""
  workdir = tmp_path_factory.mktemp('straight')
  run_main(workdir)
  return workdir


@pytest.mark.slow
def test_eight_devices_give_the_same_losses_as_one(straight_run, tmp_path):
  run_main(tmp_path, devices=8)
  one, eight = step_losses(straight_run), step_losses(tmp_path)
  assert sorted(one) == sorted(eight) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([eight[s] for s in range(1, 21)], [one[s] for s in range(1, 21)],
                             rtol=0, atol=1e-5)
  assert examples_seen(straight_run) == examples_seen(tmp_path)


def assert_same_run(reference, resumed) -> None:
  for a, b in zip(final_state(reference), final_state(resumed), strict=True):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
  assert examples_seen(resumed) == examples_seen(reference)
  assert [row['step'] for row in examples_seen(reference)] == list(range(1, STEPS + 1))


@pytest.mark.slow
def test_sigterm_then_sigkill_at_an_unplanned_step_each_resume_exactly(straight_run, tmp_path):
  """A SIGTERM checkpoints the step it stops at and the rerun continues from it; a later
  SIGKILL at a step drawn at run time loses at most the steps since the last checkpoint.
  The run that resumed from both equals the one that never stopped."""
  process = subprocess.Popen(main_command(tmp_path), cwd=REPO, env=environment(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  wait_for_steps(process, tmp_path, 7)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 143, stderr[-3000:]
  assert not os.path.exists(tmp_path / workdir_lock.LOCK)  # released on the SIGTERM stop
  stopped_at = max(step_losses(tmp_path))
  assert stopped_at < STEPS
  assert max(checkpoint_steps(tmp_path)) == stopped_at  # saved at the step it stopped

  # Drawn now, not chosen in advance.
  kill_after = random.Random().randint(min(stopped_at + 2, STEPS - 3), STEPS - 3)
  process = subprocess.Popen(main_command(tmp_path), cwd=REPO, env=environment(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  wait_for_steps(process, tmp_path, kill_after)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert min(s for s in step_losses(tmp_path) if s > stopped_at) == stopped_at + 1
  assert max(checkpoint_steps(tmp_path)) < STEPS, f'killed after step {kill_after}'
  assert os.path.exists(tmp_path / workdir_lock.LOCK)  # a SIGKILL leaves it behind
  last_saved = max(checkpoint_steps(tmp_path))
  assert 'taking over the lock of a dead run' in run_main(tmp_path).stderr
  assert resumed_from(tmp_path) == last_saved >= stopped_at
  assert resumed_from(straight_run) == 0
  assert_same_run(straight_run, tmp_path)


@pytest.mark.slow
def test_nan_loss_stops_the_run_then_a_changed_config_is_refused_or_starts_over(
    straight_run, tmp_path, capfd):
  """The NaN stop keeps the last good checkpoint. Those checkpoints were made with
  lr=1e30: a rerun under another lr is refused by name, not resumed; with --redo_changed
  the train starts over (the run equals one that never met the NaN) and the NaN run's
  checkpoints, logs and run.json are kept under previous/0."""
  nan = ('--config.optim.lr=1e30', '--config.optim.clip_grad_norm=0.')
  line = error_line(run_main(tmp_path, *nan, '--config.checkpoint_every_steps=1', check=False))
  assert line.startswith('error: The loss is ') and 'last good checkpoint is step' in line
  losses = step_losses(tmp_path)
  good = [s for s, loss in losses.items() if np.isfinite(loss)]
  assert checkpoint_steps(tmp_path) and max(checkpoint_steps(tmp_path)) == max(good)
  assert all(
      np.all(np.isfinite(leaf))
      for leaf in final_state(tmp_path, max(good))
      if leaf.dtype.kind == 'f')

  saved = checkpoint_steps(tmp_path)
  line = error_line(
      main_in_process(capfd, '--config=tests/helpers/train_config.py', f'--workdir={tmp_path}'))
  assert line == (
      f'error: {tmp_path}: stage train was made by another config (optim.clip_grad_norm 0.0, '
      'now 5.0; optim.lr 1e+30, now 0.002). Use another --workdir, --mode=train to redo that '
      'stage, or --redo_changed to redo every stage whose inputs changed (train starts over; '
      f'its old outputs move to {tmp_path}/previous/).')
  assert checkpoint_steps(tmp_path) == saved  # refused before any work
  run_main(tmp_path, '--redo_changed')
  assert_same_run(straight_run, tmp_path)
  previous = tmp_path / 'previous' / '0'
  assert checkpoint_steps(previous) == saved and step_losses(previous) == losses
  assert json.loads((previous / 'run.json').read_text()) == json.loads(
      (tmp_path / 'run.json').read_text())


@pytest.mark.slow
def test_full_disk_stops_with_one_line_and_the_rerun_resumes_exactly(straight_run, small_disk):
  """A disk filled mid-run (the small writes still fit, a checkpoint does not) ends the
  run with one line naming the checkpoint directory and the free space; the unfinished
  checkpoint is not taken for one, and once space is freed the rerun equals run A."""
  workdir = os.path.join(small_disk.path, 'run')
  process = subprocess.Popen(main_command(workdir), cwd=REPO, env=environment(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  wait_for_steps(process, workdir, 6)  # step 5's checkpoint is written or being written
  small_disk.fill(leave=1 << 20)
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 1, stderr[-3000:]
  last = error_line(subprocess.CompletedProcess(process.args, 1, '', stderr))
  saved = max(checkpoint_steps(workdir), default=0)
  assert last.startswith(f'error: no space left writing {workdir}/checkpoints ('), last
  assert last.endswith(f'bytes free): free space or move --workdir, then rerun: it resumes '
                       f'from step {saved} in {workdir}/checkpoints.'), last
  assert max(step_losses(workdir)) > saved
  small_disk.free_up()
  run_main(workdir)
  assert resumed_from(workdir) == saved
  assert not [name for name in os.listdir(os.path.join(workdir, 'checkpoints')) if 'tmp' in name]
  assert_same_run(straight_run, workdir)


def test_unknown_config_key_names_the_nearest(tmp_path, capfd):
  result = main_in_process(capfd, '--config=tests/helpers/train_config.py', f'--workdir={tmp_path}',
                           '--config.optim.lrr=1')
  assert error_line(result) == (
      "error: Unknown config key 'optim.lrr'. Did you mean optim.lr, optim.min_lr, optim? Every "
      'key, with its default, is in tinyvit_jax/train/config.py.')


@pytest.mark.slow
def test_batch_that_does_not_split_over_devices_names_the_numbers(tmp_path):
  result = run_main(tmp_path, '--config.batch_size=60', devices=8, check=False)
  assert error_line(result) == ('error: global batch 60 does not split over 8 devices; make '
                                'it a multiple of 8.')


def test_workdir_of_another_model_is_refused(tmp_path, capfd):
  with open(tmp_path / 'run.json', 'w') as f:
    json.dump(dict(model='deit_tiny_patch16_224', kwargs={}, num_classes=1000), f)
  line = error_line(
      main_in_process(capfd, '--config=tests/helpers/train_config.py', f'--workdir={tmp_path}'))
  assert line.startswith(f'error: {tmp_path} holds a run of another model, refusing to '
                         'resume or overwrite it: kwargs: workdir has {}, this config ')
  assert ("; model: workdir has 'deit_tiny_patch16_224', this config 'tiny_vit_5m_224'; "
          'num_classes: workdir has 1000, this config 10. Use another --workdir, or delete '
          'this one.') in line


def test_missing_teacher_checkpoint_is_named(tmp_path):
  missing = tmp_path / 'no_teacher'
  result = run_main(tmp_path, '--config.distill.kind=fpd', '--config.distill.from_store=True',
                    f'--config.distill.teacher={missing}', "--config.stages=('save_logits',)",
                    check=False)
  assert str(missing) in error_line(result)


def test_a_second_run_in_a_workdir_is_refused_naming_the_first(tmp_path):
  """This test process holds the lock, as a first run would; ``--check`` takes none."""
  with workdir_lock.hold(str(tmp_path)):
    result = run_main(tmp_path, check=False)
    assert run_main(tmp_path, '--check').stdout.startswith('ok: ')
  assert error_line(result).startswith(
      f'error: workdir {tmp_path} is in use by another run (pid {os.getpid()} on ')
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_a_save_pass_into_a_store_outside_the_workdir_locks_the_store(tmp_path):
  config = main.check_recipe(train_config.get_config(), str(tmp_path))['']
  with config.unlocked():
    config.distill.update(kind='fpd', from_store=True, k=3, store=str(tmp_path / 'store'),
                          teacher=str(tmp_path / 'no_teacher'))
  with workdir_lock.hold(config.distill.store), pytest.raises(
      workdir_lock.Locked, match=f'logit store {tmp_path}/store is in use by another run'):
    main.run_stages(config, str(tmp_path / 'run'), 'save_logits')
  assert not os.path.exists(tmp_path / 'run' / workdir_lock.LOCK)  # the run's is released


def digits_store(path: str, chunk_rows: int = 256) -> store.LogitStore:
  """A complete store of made-up top-3 rows for train_config's student (its epoch 0)."""
  config = train_config.get_config()
  source = sources.from_config(config.data, 'train')
  fields = manifest.store_fields(source, dataset_name=config.data.source, aug_config=config.aug,
                                 seed=config.seed, k=3, num_classes=config.num_classes,
                                 repeats=order.repeats_of(config.data))
  logits = store.LogitStore.create(
      path, dict(fields, teacher_name='made_up', teacher_checkpoint_hash='0'), chunk_rows)
  n = logits.rows_per_epoch
  values, indices = made_up_rows.teacher_like_topk(n, 3, config.num_classes, seed=0)
  with logits.epoch_writer(0) as writer:
    writer.write(0, values, indices, order.epoch_permutation(config.seed, 0, n))
  logits.mark_epoch_done(0)
  return logits


@pytest.mark.slow
def test_a_damaged_store_stops_the_student_after_its_last_good_checkpoint(tmp_path):
  """Chunks of 128 rows at batch 64: chunk 2 feeds steps 5-6, chunk 3 steps 7-8. The
  pipeline reads rows two batches ahead of the step, yet the run makes and saves every
  step before the bad read, names it in one line, and resumes there once repaired. A
  store of another config, or none, is refused in one line before any step."""
  logits = digits_store(str(tmp_path / 'store'), chunk_rows=128)
  flipped, deleted = logits.chunk_path(0, 2), logits.chunk_path(0, 3)
  with open(flipped, 'rb') as f:
    good = f.read()
  with open(flipped, 'wb') as f:
    f.write(good[:40] + bytes([good[40] ^ 1]) + good[41:])
  os.remove(deleted)
  workdir = tmp_path / 'run'
  fpd = ('--config.distill.kind=fpd', '--config.distill.from_store=True', '--config.distill.k=3',
         f'--config.distill.store={logits.path}', '--config.checkpoint_every_steps=2')

  result = run_main(workdir, *fpd, '--config.seed=1', check=False)  # another config's store
  assert error_line(result) == (
      f'error: The logit store at {logits.path} does not match this student: seed: store 0, '
      'student 1. Use the settings it was saved with, or another --config.distill.store.')
  nowhere = tmp_path / 'nowhere'
  result = run_main(workdir, *fpd, f'--config.distill.store={nowhere}', check=False)
  assert error_line(result).startswith(
      f'error: {nowhere} holds no logit store (manifest.json is missing): run the save stage')

  for chunk, rows, problem, last_good in ((flipped, '[256, 384)', 'checksum', 4),
                                          (deleted, '[384, 512)', 'does not exist', 6)):
    line = error_line(run_main(workdir, *fpd, check=False))
    assert line.startswith(f'error: epoch 0, rows {rows}: chunk {chunk} is unusable: ')
    assert problem in line and line.endswith(
        'The run stopped before the step that needs it; repair the store (README, "When '
        f'things go wrong"), then rerun: it resumes from step {last_good} in {workdir}/'
        'checkpoints.')
    assert max(checkpoint_steps(workdir)) == last_good
    with open(flipped, 'wb') as f:  # the repair: the good bytes back
      f.write(good)
  assert sorted(step_losses(workdir)) == [1, 2, 3, 4, 5, 6]  # the rerun resumed at step 5
