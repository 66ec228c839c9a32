"""benchmarks/deit_distill.py at one epoch, its two students with a teacher in the loop:
soft distillation on the class token, and the distilled DeiT whose two heads learn
different targets. Each trains and learns, and the table is whole. (Labels alone and hard
distillation on the class token run the same trainer and step; their losses, one head or
two, are held against DeiT's formulas in test_distill_losses.py.)"""
import json
import math
import os
import subprocess
import sys

import pytest

from tinyvit_jax.train import metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_one_epoch_runs_learn_and_the_distillation_head_follows_the_teacher(tmp_path):
  out = tmp_path / 'deit_distill.json'
  subprocess.run([
      sys.executable,
      os.path.join(REPO, 'benchmarks', 'deit_distill.py'), '--workdir',
      str(tmp_path / 'runs'), '--seeds', '3', '--teacher_epochs', '1', '--student_epochs', '1',
      '--settings', 'soft,hard_dist', '--out',
      str(out)
  ], check=True, cwd=REPO, timeout=900, capture_output=True)
  report = json.loads(out.read_text())
  students = [row['student'] for row in report['rows']]
  assert students == ['soft', 'hard_dist (cls)', 'hard_dist (dist)', 'hard_dist (avg)']
  for row in report['rows']:
    assert 0 <= row['seed3'] <= 1 and row['mean'] == row['seed3']
  assert 0 <= report['teacher_top1'] <= 1 and report['seeds'] == [3]
  summary = json.loads((tmp_path / 'runs' / 'summary.json').read_text())
  assert [(row['run'], row['model'], row['distill']) for row in summary
         ] == [('teacher', 'resnet18', 'none'), ('soft_seed3', 'deit_tiny_patch16_224', 'soft'),
               ('hard_dist_seed3', 'deit_tiny_distilled_patch16_224', 'hard')]
  # One epoch (22 steps) is too short to beat chance on held-out top-1 (every model then
  # predicts one class), so what shows learning is the runs' own figures: each run's
  # training loss falls from its first logged step (10) to its last (22), and the
  # teacher's held-out loss is below chance's, ln 10.
  for row in summary:
    losses = [
        r['loss'] for r in metrics.read_metrics(str(tmp_path / 'runs' / row['run'])) if 'loss' in r
    ]
    assert losses[-1] < 0.99 * losses[0], (row['run'], losses)
  teacher_eval = [
      r for r in metrics.read_metrics(str(tmp_path / 'runs' / 'teacher')) if 'eval_loss' in r
  ]
  assert teacher_eval[-1]['eval_loss'] < math.log(10) - 0.01
  # Hard distillation: the distillation head learns the teacher's argmax, the class head
  # the labels, so the two heads' top-1 differ, the first one's being the teacher's.
  agreement = report['hard_dist_teacher_agreement']['3']
  assert agreement['dist'] > agreement['cls'] + 0.5, agreement
