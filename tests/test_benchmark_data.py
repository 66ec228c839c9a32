"""benchmarks/data.py --quick runs both pipelines end to end and writes the JSON it promises."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quick_run_writes_positive_figures(tmp_path):
  out = tmp_path / 'data.json'
  # Loading in the benchmark's own process: every arm and the breakdown run, without
  # worker start-ups (our loader's workers are tested in tests/test_data_loader.py).
  subprocess.run([
      sys.executable,
      os.path.join(REPO, 'benchmarks', 'data.py'), '--quick', '--workers', '0', '--breakdown',
      '--cache',
      str(tmp_path / 'jpegs'), '--json',
      str(out)
  ], check=True, cwd=REPO, timeout=600)
  report = json.loads(out.read_text())

  assert report['config']['batch'] == 8 and report['config']['workers'] == 0
  assert len(os.listdir(tmp_path / 'jpegs_quick' / '64_375x500')) == 10 + 1  # classes, done
  for arm in ('ours', 'timm', 'ours_host_side'):
    for metric in ('img_per_s', 'img_per_cpu_s'):
      rate = report['results'][arm][metric]
      assert len(rate['runs']) == 2 and all(r > 0 for r in rate['runs'])
      assert rate['min'] <= rate['median'] <= rate['max']
  for arm, stage in (('ours', 'RandAugment'), ('timm', 'RandAugment'), ('timm', 'collate'),
                     ('ours', "augment_on='device': its device half run by XLA on this CPU")):
    assert report['breakdown'][arm][stage] > 0
  by_round = report['ours_over_timm_by_round']['img_per_cpu_s']['runs']
  assert by_round == pytest.approx([
      o / t for o, t in zip(report['results']['ours']['img_per_cpu_s']['runs'], report['results']
                            ['timm']['img_per_cpu_s']['runs'])
  ])
  assert report['ours_over_timm']['img_per_s'] == pytest.approx(
      report['results']['ours']['img_per_s']['median']
      / report['results']['timm']['img_per_s']['median'])
  assert report['ours_host_side_over_timm']['img_per_cpu_s'] == pytest.approx(
      report['results']['ours_host_side']['img_per_cpu_s']['median']
      / report['results']['timm']['img_per_cpu_s']['median'])
