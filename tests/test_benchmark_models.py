"""benchmarks/models.py --quick runs end to end and writes the JSON it promises."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quick_run_writes_positive_figures(tmp_path):
  out = tmp_path / 'models.json'
  subprocess.run([
      sys.executable,
      os.path.join(REPO, 'benchmarks', 'models.py'), '--quick', '--models',
      'deit_tiny_distilled_patch16_224', '--threads', '1', '--json',
      str(out)
  ], check=True, cwd=REPO, timeout=600)
  report = json.loads(out.read_text())

  assert report['environment']['jax_threads'] == report['environment']['torch_threads'] == 1
  assert report['environment']['isa'] in ('avx512f', 'avx2', 'avx', 'none')  # names the machine
  assert report['config']['batch'] == 4 and report['config']['img_size'] == 64
  assert [(r['model'], r['mode']) for r in report['results']
         ] == [('deit_tiny_distilled_patch16_224', 'forward'),
               ('deit_tiny_distilled_patch16_224', 'train')]
  for row in report['results']:
    assert 'timm_compile' not in row and row['ours_over_compile'] is None  # --quick skips it
    for impl in ('ours', 'timm_eager'):
      rate = row[impl]['img_per_s']
      assert len(rate['runs']) == 2 and all(r > 0 for r in rate['runs'])
      assert rate['min'] <= rate['median'] <= rate['max']
      assert row[impl]['first_call_s'] > 0
    assert row['ours_over_eager'] == pytest.approx(row['ours']['img_per_s']['median']
                                                   / row['timm_eager']['img_per_s']['median'])
  overhead = report['step_overhead']
  for key in ('noop_step_ms', 'noop_step_flat_ms', 'train_step_ms'):
    assert overhead[key] > 0
