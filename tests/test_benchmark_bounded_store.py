"""benchmarks/bounded_store.py: its recipe passes the run checks, and each bounded arm
reads its seed's per-epoch store cut to its first M epochs, over stand-in stages."""
import json
import os
import sys

import numpy as np

from tinyvit_jax import main as main_lib
from tinyvit_jax.distill import store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'benchmarks'))

import bounded_store  # pylint: disable=g-import-not-at-top,wrong-import-position
from stand_in_stages import ROWS, fake_stages


def test_bounded_arms_read_the_first_epochs_of_their_seeds_store(tmp_path, monkeypatch):
  runs = main_lib.check_recipe(bounded_store.recipe([0, 1], 10), str(tmp_path / 'check'))
  assert {run.distill.views_per_example for run in runs.values()} == {0, 1, 2, 5, 10}
  monkeypatch.setattr(main_lib, 'run_stages', fake_stages)
  out = tmp_path / 'result.json'
  result = bounded_store.main(
      ['--seeds', '0,1', '--workdir',
       str(tmp_path / 'runs'), '--out',
       str(out)])
  assert json.loads(out.read_text()) == json.loads(json.dumps(result))
  rows = {row['arm']: row for row in result['accuracy']}
  assert list(rows) == ['per_epoch', 'views_1', 'views_2', 'views_5', 'views_10']
  assert [rows[arm]['stored_epochs'] for arm in rows] == [12, 1, 2, 5, 10]
  sizes = [
      rows[arm]['store_bytes'] for arm in ('views_1', 'views_2', 'views_5', 'views_10', 'per_epoch')
  ]
  assert sizes == sorted(sizes) and len(set(sizes)) == 5
  for row in rows.values():
    assert abs(row['mean'] - (row['seed0'] + row['seed1']) / 2) <= 1e-4
  saved = store.LogitStore.open(str(tmp_path / 'runs' / 'per_epoch_seed1' / 'logits'))
  bounded = store.LogitStore.open(str(tmp_path / 'runs' / 'views_5_seed1' / 'logits'))
  assert bounded.manifest['views_per_example'] == 5 and bounded.epochs_done == [0, 1, 2, 3, 4]
  for got, full in zip(bounded.read(4, 0, ROWS), saved.read(4, 0, ROWS)):
    np.testing.assert_array_equal(got, full)
