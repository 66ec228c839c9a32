"""The write layer: a file or folder is replaced whole or not at all, a full disk is one
line naming the file, the free space and the fix, and ``plain_json`` is what
``write_json``'s file reads back."""
import json
import os

import ml_collections
import numpy as np
import pytest

from tinyvit_jax import writes


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  path = str(tmp_path / 'record.json')
  writes.write_json(path, dict(done=1))
  with pytest.raises(RuntimeError, match='midway'):
    with writes.replacing(path) as tmp, open(tmp, 'w') as f:
      f.write('{"done": ')
      raise RuntimeError('midway')
  assert os.listdir(tmp_path) == ['record.json']
  assert json.loads((tmp_path / 'record.json').read_text()) == dict(done=1)


def test_a_folder_is_replaced_whole_and_a_killed_writes_leftover_goes(tmp_path):
  path = str(tmp_path / 'export')
  os.makedirs(os.path.join(path + '.tmp', 'state'))  # what a killed write left
  with writes.replacing(path) as tmp:
    os.mkdir(tmp)
    (tmp_path / 'export.tmp' / 'model.json').write_text('{}')
  assert os.listdir(tmp_path) == ['export'] and os.listdir(path) == ['model.json']


def test_write_json_writes_what_plain_json_reads_back(tmp_path):
  value = dict(shape=(1, np.float32(0.5)), kwargs=ml_collections.ConfigDict(dict(k=np.int64(3))))
  path = tmp_path / 'value.json'
  writes.write_json(str(path), value, sort_keys=True)
  assert path.read_text() == json.dumps(writes.plain_json(value), indent=1, sort_keys=True)
  assert json.loads(path.read_text()) == writes.plain_json(value) == dict(
      shape=[1, 0.5], kwargs=dict(k=3))


def test_full_disk_names_the_file_the_free_space_and_the_flag_that_moves_it(small_disk):
  path = os.path.join(small_disk.path, 'metadata.json')
  small_disk.fill()
  with pytest.raises(writes.DiskFull) as error:
    writes.write_json(path, list(range(100_000)), move='--out')
  assert str(error.value) == (f'no space left writing {path} ({writes.free_bytes(path):,} '
                              'bytes free): free space or move --out, then rerun.')
  assert os.listdir(small_disk.path) == ['ballast']
