"""benchmarks/accelerator.py: --quick runs every arm on this machine's backend (a CPU in
CI, a GPU where there is one) and reports it as that backend's; the deadline is kept."""
import json
import os
import subprocess
import sys

import jax
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'benchmarks'))

import accelerator  # pylint: disable=g-import-not-at-top,wrong-import-position
import fpd  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.mark.slow
def test_quick_runs_every_arm_and_reports_it(tmp_path):
  subprocess.run([
      sys.executable,
      os.path.join(REPO, 'benchmarks', 'accelerator.py'), '--quick', '--out',
      str(tmp_path)
  ], check=True, cwd=REPO, timeout=1200)
  report = json.loads((tmp_path / 'accelerator.json').read_text())
  arms = report['arms']
  assert list(arms) == [
      'step:tiny_vit_5m_224', 'student', 'augment', 'save_pass',
      'save_pass:vit_large_patch14_clip_224', 'loader', 'attention'
  ]
  assert {name: arm['status'] for name, arm in arms.items()} == dict.fromkeys(arms, 'ok')
  backend = jax.default_backend()
  (device,) = {arm['device'] for arm in arms.values()}
  for name, arm in arms.items():
    assert arm['backend'] == backend
    memory = arm['memory']
    if backend == 'cpu':  # (f): CPU devices keep no memory statistics
      assert memory == dict(jax_peak_bytes=None, torch_peak_bytes=None)
    else:  # every arm puts something on the device; torch only where it ran on CUDA
      assert memory['jax_peak_bytes'] > 0, name
      assert memory['torch_peak_bytes'] is None or memory['torch_peak_bytes'] >= 0, name

  rows = arms['step:tiny_vit_5m_224']['result']['rows']
  assert [(r['model'], r['mode']) for r in rows] == [(accelerator.QUICK_STEP_MODEL, 'forward'),
                                                     (accelerator.QUICK_STEP_MODEL, 'train')]
  for row in rows:
    assert row['ours_over_eager'] == pytest.approx(row['ours']['img_per_s']['median']
                                                   / row['timm_eager']['img_per_s']['median'])

  augment = arms['augment']['result']
  assert augment['share_of_step'] == pytest.approx(1 - augment['augmented']['img_per_s']['median']
                                                   / augment['plain']['img_per_s']['median'])
  assert augment['config']['aug']['rand_augment'] == 'rand-m9-mstd0.5-inc1'
  student = arms['student']['result']
  assert student['overhead'] == pytest.approx(student['store_step_s']['median']
                                              / student['labels_step_s']['median'] - 1)
  save = arms['save_pass']['result']
  assert save['config']['aug']['augment_on'] == 'device'
  assert save['config']['teacher'] == 'deit_tiny_patch16_224'  # the teacher it names
  assert save['save_over_inference'] == pytest.approx(save['save']['median']
                                                      / save['inference']['median'])
  vit = arms['save_pass:vit_large_patch14_clip_224']['result']  # --quick: a tiny ViT
  assert (vit['config']['teacher'],
          vit['config']['teacher_kwargs']) == ('vit_base_patch16_clip_224', fpd.QUICK_VIT)
  assert vit['save_over_inference'] == pytest.approx(vit['save']['median']
                                                     / vit['inference']['median'])
  loader = arms['loader']['result']
  assert set(loader) == {'full_decode', 'draft', 'config'}
  assert loader['config']['augment_on'] == 'device'

  attention = arms['attention']['result']
  assert attention['impls'] == ['einsum', 'xla'] + (['cudnn'] if backend == 'gpu' else [])
  assert [(r['model'], r['mode']) for r in attention['rows']
         ] == [(accelerator.QUICK_STEP_MODEL, 'forward'), (accelerator.QUICK_STEP_MODEL, 'train')]

  table = (tmp_path / 'accelerator.md').read_text()
  assert table.startswith(f'Device: {device}; batch 4, float32 compute, 2 rounds')
  assert (device == 'cpu') == (backend == 'cpu')
  ratio = loader['full_decode']['img_per_s']['median'] / augment['augmented']['img_per_s']['median']
  for line in (f'| {accelerator.QUICK_STEP_MODEL} train img/s |', '| store-fed step, ms |',
               f'share {augment["share_of_step"]:.1%}', f'{save["save_over_inference"]:.2f}x',
               f'| save pass, vit_base_patch16_clip_224 img/s | {accelerator._rate(vit["save"])}',
               f'| {ratio:.2f}x | >= 1.0x |', 'train, attention einsum img/s'):
    assert line in table


def test_an_arm_the_deadline_leaves_no_time_for_is_reported_not_run(tmp_path, capsys):
  accelerator.main(['--arms', 'save_pass,student', '--deadline', '20', '--out', str(tmp_path)])
  report = json.loads((tmp_path / 'accelerator.json').read_text())
  assert [arm['status'] for arm in report['arms'].values()
         ] == ['not run: 20 s left of the 20 s deadline'] * 2
  assert '| save_pass | not run: 20 s left' in (tmp_path / 'accelerator.md').read_text()
  assert 'Device: not known yet' in capsys.readouterr().out


def test_unknown_arm_is_named():
  with pytest.raises(SystemExit):
    accelerator.parse_args(['--arms', 'step:vit_huge'])
