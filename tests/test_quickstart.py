"""The README's main job (``conftest.quickstart``, run once per suite, shorter), then ``predict`` on
its export."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from workdirs import QUICKSTART_EPOCHS
from tinyvit_jax.data.sources import digits
from tinyvit_jax.train import metrics
from tinyvit_jax.train import teacher_eval

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quickstart_trains_distils_evaluates_and_exports(quickstart, tmp_path):
  workdir, stdout = quickstart
  with open(workdir / 'summary.json') as f:
    rows = {row['run']: row for row in json.load(f)}
  assert list(rows) == ['teacher', 'student_fpd', 'student_labels']
  # The 547K-parameter students are not TinyViT-5M, whose constructor they use.
  assert [row['model'] for row in rows.values()
         ] == ['tiny_vit_5m_32', 'tiny_vit_0.5m_32', 'tiny_vit_0.5m_32']
  for row in rows.values():  # 10 classes: chance is 0.1
    assert row['top1'] > 0.5, rows
  assert 'student_fpd' in stdout and 'top1' in stdout  # the final table
  fpd = json.loads((workdir / 'student_fpd' / 'stages.json').read_text())
  assert fpd['save_logits']['top1_agreement'] >= 0.99  # verify re-ran the teacher
  _check_teacher_agreement(workdir, rows, stdout)

  test = digits.DigitsSource('test', image_size=32)
  paths = []
  for i in range(8):
    paths.append(str(tmp_path / f'digit{i}.png'))
    Image.fromarray(test[i]['image']).save(paths[-1])
  predicted = subprocess.run([
      sys.executable, '-m', 'tinyvit_jax.predict', '--checkpoint',
      str(workdir / 'teacher' / 'export'), *paths
  ], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  top1 = [line.split()[-1] for line in predicted.stdout.splitlines() if line.startswith('  ')][::5]
  hits = np.mean([label == str(test[i]['label']) for i, label in enumerate(top1)])
  assert len(top1) == 8 and hits >= 0.5, predicted.stdout


def _check_teacher_agreement(workdir, rows, stdout):
  """The FPD student's every eval reports agreement with its teacher and KL from it, on
  the teacher's eval probabilities kept in its workdir; runs without a teacher report
  neither, and keep no such file."""
  for run in ('teacher', 'student_labels'):
    assert not any('teacher' in key for row in metrics.read_metrics(workdir / run) for key in row)
    assert not any('teacher' in key for key in rows[run])
    assert not (workdir / run / teacher_eval.FILE).exists()
  evals = [row for row in metrics.read_metrics(workdir / 'student_fpd') if 'eval_top1' in row]
  assert len(evals) == QUICKSTART_EPOCHS  # one per epoch
  assert all('eval_teacher_agreement' in row and 'eval_teacher_kl' in row for row in evals)
  fpd, teacher = rows['student_fpd'], rows['teacher']
  assert fpd['teacher_agreement'] == pytest.approx(evals[-1]['eval_teacher_agreement'])
  assert fpd['teacher_kl'] == pytest.approx(evals[-1]['eval_teacher_kl'])
  # Where exactly one of the two is right they disagree; where both are, they agree.
  gap = abs(fpd['top1'] - teacher['top1'])
  assert fpd['top1'] + teacher['top1'] - 1 - 1e-6 <= fpd['teacher_agreement'] <= 1 - gap + 1e-6
  assert 0 < fpd['teacher_kl'] < 1  # nats; a student that ignored its teacher is near ln 10
  assert 'teacher_agreement' in stdout and 'teacher_kl' in stdout
  # The kept rows are the teacher's own top-3, in dataset order: its accuracy.
  with np.load(workdir / 'student_fpd' / teacher_eval.FILE) as kept:
    indices = kept['indices']
  labels = digits.DigitsSource('test', image_size=32).labels
  assert indices.shape == (len(labels), 3)
  assert np.mean(indices[:, 0] == labels) == pytest.approx(teacher['top1'])
