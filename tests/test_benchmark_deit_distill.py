"""benchmarks/deit_distill.py at one epoch: every setting trains and the table is whole."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_one_epoch_run_reports_every_setting_and_head(tmp_path):
  out = tmp_path / 'deit_distill.json'
  subprocess.run([sys.executable, os.path.join(REPO, 'benchmarks', 'deit_distill.py'),
                  '--workdir', str(tmp_path / 'runs'), '--seeds', '3', '--teacher_epochs', '1',
                  '--student_epochs', '1', '--out', str(out)],
                 check=True, cwd=REPO, timeout=900, capture_output=True)
  report = json.loads(out.read_text())
  students = [row['student'] for row in report['rows']]
  assert students == ['none', 'soft', 'hard_cls', 'hard_dist (cls)', 'hard_dist (dist)',
                      'hard_dist (avg)']
  for row in report['rows']:
    assert 0 <= row['seed3'] <= 1 and row['mean'] == row['seed3']
  assert 0 <= report['teacher_top1'] <= 1 and report['seeds'] == [3]
  summary = json.loads((tmp_path / 'runs' / 'summary.json').read_text())
  assert [(row['run'], row['model'], row['distill']) for row in summary] == [
      ('teacher', 'resnet18', 'none'),
      ('none_seed3', 'deit_tiny_patch16_224', 'none'),
      ('soft_seed3', 'deit_tiny_patch16_224', 'soft'),
      ('hard_cls_seed3', 'deit_tiny_patch16_224', 'hard'),
      ('hard_dist_seed3', 'deit_tiny_distilled_patch16_224', 'hard')]
