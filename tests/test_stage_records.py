"""A workdir remembers the config that made each stage (train/stage_records.py): a rerun
under another config is refused by name before any work; one that changes nothing a stage
returns is not; a record from before the config was kept is taken, with a warning.

The finished quickstart's records, copied alone into a new workdir, stand in for it:
every check happens before the first stage starts, and every stage is done, so main reads
nothing else. (The flag that redoes a changed train, for real, is test_train_system's.)
"""
import json
import os

import pytest

from workdirs import QUICKSTART, QUICKSTART_EPOCHS, error_line, main_in_process

RUNS = ('teacher', 'student_fpd', 'student_labels')
REDO = ('Use another --workdir, --mode={stage} to redo that stage, or --redo_changed to redo '
        'every stage whose inputs changed')


def records_of(quickstart, tmp_path, *, with_config: bool = True):
  """A workdir holding only the quickstart's ``stages.json`` files (without their
  ``inputs`` when not ``with_config``, as an older version wrote them)."""
  workdir, _ = quickstart
  copy = tmp_path / 'qs'
  for run in RUNS:
    record = json.loads((workdir / run / 'stages.json').read_text())
    assert set(record) == {'save_logits', 'train', 'eval', 'export'
                          } - (set() if run == 'student_fpd' else {'save_logits'})
    for result in record.values():
      if not with_config:
        del result['inputs']
    (copy / run).mkdir(parents=True)
    (copy / run / 'stages.json').write_text(json.dumps(record))
  return copy


def quickstart_in(copy, capfd, *overrides):
  return main_in_process(capfd, *QUICKSTART, f'--workdir={copy}',
                         *(f'--config.runs.{override}' for override in overrides))


@pytest.mark.slow
@pytest.mark.parametrize('override, run, stage, change', [
    ('teacher.epochs=40', 'teacher', 'train', f'epochs {QUICKSTART_EPOCHS}, now 40'),
    ('student_labels.optim.lr=0.01', 'student_labels', 'train', 'optim.lr 0.002, now 0.01'),
    ('student_fpd.model.name=deit_tiny_patch16_224', 'student_fpd', 'train',
     'model.name "tiny_vit_5m_224", now "deit_tiny_patch16_224"'),
    ('student_fpd.distill.teacher=/elsewhere/export', 'student_fpd', 'save_logits',
     'distill.teacher "{workdir}/teacher/export", now "/elsewhere/export"'),
])
def test_a_changed_config_is_refused_by_name_before_any_work(quickstart, tmp_path, capfd, override,
                                                             run, stage, change):
  copy = records_of(quickstart, tmp_path)
  line = error_line(quickstart_in(copy, capfd, override))
  assert line == (f'error: {copy}/{run}: stage {stage} was made by another config '
                  f'({change}). {REDO.format(stage=stage)} (train starts over; its old '
                  f'outputs move to {copy}/{run}/previous/).')
  assert sorted(os.listdir(copy)) == sorted(RUNS)  # no summary: no run started
  assert all(os.listdir(copy / name) == ['stages.json'] for name in RUNS)  # nor a lock


@pytest.mark.slow
def test_a_change_that_changes_no_result_is_not_refused(quickstart, tmp_path, capfd):
  """Log, checkpoint and eval cadences, the eval batch: every stage stays done, and the
  rerun reports the quickstart's own figures."""
  copy = records_of(quickstart, tmp_path)
  result = quickstart_in(copy, capfd, 'teacher.log_every_steps=7', 'student_fpd.eval_batch_size=16',
                         'student_fpd.distill.verify_rows=8',
                         'student_labels.checkpoint_every_steps=3',
                         'student_labels.eval_every_epochs=4')
  assert result.returncode == 0, result.stderr[-3000:]
  assert (json.loads((copy / 'summary.json').read_text()) == json.loads(
      (quickstart[0] / 'summary.json').read_text()))


@pytest.mark.slow
def test_a_record_without_its_config_is_taken_with_a_warning(quickstart, tmp_path, capfd):
  copy = records_of(quickstart, tmp_path, with_config=False)
  result = quickstart_in(copy, capfd, 'teacher.epochs=40')
  assert result.returncode == 0, result.stderr[-3000:]
  for run in RUNS:
    assert (f'{copy}/{run}: stage train was recorded without the config that made it (by an '
            'older version); taken as made by this one.') in result.stderr


def test_the_cheapest_stage_of_another_config_is_refused(tmp_path, capfd):
  """An untrained model's export (no step, no compile of one) records its config too."""
  student = ('--config=tests/helpers/train_config.py', f'--workdir={tmp_path}',
             "--config.stages=('train', 'export')")
  assert main_in_process(capfd, *student, '--mode=export').returncode == 0
  made = {name: os.stat(tmp_path / name).st_mtime_ns for name in os.listdir(tmp_path)}
  assert error_line(main_in_process(capfd, *student, '--config.optim.lr=0.01')) == (
      f'error: {tmp_path}: stage export was made by another config (optim.lr 0.002, now '
      '0.01). Use another --workdir, --mode=export to redo that stage, or --redo_changed to '
      'redo every stage whose inputs changed.')
  assert {name: os.stat(tmp_path / name).st_mtime_ns for name in os.listdir(tmp_path)} == made
