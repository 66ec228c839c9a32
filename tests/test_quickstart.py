"""The README's main job (``conftest.quickstart``, run once per suite), then ``predict`` on
its export."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tinyvit_jax.data.sources import digits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quickstart_trains_distils_evaluates_and_exports(quickstart, tmp_path):
  workdir, stdout = quickstart
  with open(workdir / 'summary.json') as f:
    rows = {row['run']: row for row in json.load(f)}
  assert list(rows) == ['teacher', 'student_fpd', 'student_labels']
  # The 547K-parameter students are not TinyViT-5M, whose constructor they use.
  assert [row['model'] for row in rows.values()] == [
      'tiny_vit_5m_32', 'tiny_vit_0.5m_32', 'tiny_vit_0.5m_32']
  for row in rows.values():  # 10 classes: chance is 0.1
    assert row['top1'] > 0.5, rows
  assert 'student_fpd' in stdout and 'top1' in stdout  # the final table
  fpd = json.loads((workdir / 'student_fpd' / 'stages.json').read_text())
  assert fpd['save_logits']['top1_agreement'] >= 0.99  # verify re-ran the teacher

  test = digits.DigitsSource('test', image_size=32)
  paths = []
  for i in range(8):
    paths.append(str(tmp_path / f'digit{i}.png'))
    Image.fromarray(test[i]['image']).save(paths[-1])
  predicted = subprocess.run(
      [sys.executable, '-m', 'tinyvit_jax.predict', '--checkpoint',
       str(workdir / 'teacher' / 'export'), *paths], cwd=REPO, capture_output=True, text=True,
      timeout=300)
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  top1 = [line.split()[-1] for line in predicted.stdout.splitlines() if line.startswith('  ')][::5]
  hits = np.mean([label == str(test[i]['label']) for i, label in enumerate(top1)])
  assert len(top1) == 8 and hits >= 0.5, predicted.stdout
