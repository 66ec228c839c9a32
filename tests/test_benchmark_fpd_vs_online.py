"""benchmarks/fpd_vs_online.py: its recipes pass the run checks, and its tables, cut stores
and cost ratios are right, over stand-in stages (a real run of it takes minutes)."""
import json
import os
import sys

import numpy as np

from tinyvit_jax import main as main_lib
from tinyvit_jax.distill import store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'benchmarks'))

import fpd_vs_online  # pylint: disable=g-import-not-at-top,wrong-import-position
from stand_in_stages import ROWS, fake_stages


def test_every_setup_passes_the_run_checks(tmp_path):
  for setup in fpd_vs_online.SETUPS:
    runs = main_lib.check_recipe(fpd_vs_online.recipe(setup, [0, 1, 2], 10), str(tmp_path))
    online = runs[fpd_vs_online.run_name(setup, 'online', 1)].distill
    assert (online.kind, online.from_store) == ('fpd', False)
    assert {run.epochs for name, run in runs.items() if name != 'teacher'
           } == {fpd_vs_online.SETUPS[setup][0]}


def test_tables_cut_stores_and_costs(tmp_path, monkeypatch):
  monkeypatch.setattr(main_lib, 'run_stages', fake_stages)
  out = tmp_path / 'result.json'
  result = fpd_vs_online.main([
      '--setup', 'short', '--seeds', '0,1', '--student_epochs', '2', '--workdir',
      str(tmp_path / 'runs'), '--out',
      str(out)
  ])
  assert json.loads(out.read_text()) == json.loads(json.dumps(result))
  assert [row['arm'] for row in result['accuracy']
         ] == ['labels', 'online', 'fpd_k1', 'fpd_k3', 'fpd_k5', 'fpd_k10']
  for row in result['accuracy']:
    assert 0 <= row['seed0'] <= 1 and 0 <= row['seed1'] <= 1
    assert abs(row['mean'] - (row['seed0'] + row['seed1']) / 2) <= 1e-4
  sizes = [row['bytes_per_row'] for row in result['accuracy'][2:]]
  assert sizes == sorted(sizes) and len(set(sizes)) == 4
  # A cut store holds the saved rows' first k, for every epoch.
  saved = store.LogitStore.open(str(tmp_path / 'runs' / 'short_fpd_k10_seed1' / 'logits'))
  cut = store.LogitStore.open(str(tmp_path / 'runs' / 'short_fpd_k3_seed1' / 'logits'))
  assert cut.k == 3 and cut.epochs_done == saved.epochs_done == [0, 1]
  for got, full in zip(cut.read(1, 0, ROWS), saved.read(1, 0, ROWS)):
    np.testing.assert_array_equal(got, full[:, :3] if full.ndim == 2 else full)
  # Costs: the medians of the times the runs took, N x online against save + N x FPD.
  times = json.loads((tmp_path / 'runs' / 'times.json').read_text())
  seconds = result['seconds']
  for part, (run, stage) in dict(save=('fpd_k10', 'save_logits'), online=('online', 'train'),
                                 fpd_k10=('fpd_k10', 'train')).items():
    walls = [times[fpd_vs_online.run_name('short', run, s)][stage]['wall'] for s in (0, 1)]
    assert seconds[part]['wall'] == round(sum(walls) / 2, 2)
  assert seconds['online']['wall'] > seconds['fpd_k10']['wall']
  # Steps 10 and 20 done 6.4 s and 8 s into the loop, at 5 steps an epoch.
  assert seconds['online']['steady_epoch'] == 0.8
  for row in result['cost']:
    n = row['students']
    assert row['online_s'] == round(n * seconds['online']['wall'], 1)
    assert row['fpd_s'] == round(seconds['save']['wall'] + n * seconds['fpd_k10']['wall'], 1)
    for kind, ratio in (('wall', 'fpd_over_online'), ('cpu', 'cpu_fpd_over_online')):
      assert row[ratio] == round((seconds['save'][kind] + n * seconds['fpd_k10'][kind]) /
                                 (n * seconds['online'][kind]), 3)
  assert [row['students'] for row in result['cost']] == [1, 3, 10]
