"""The folder -> ArrayRecord converter: skips bad files, resumes after SIGKILL, reads back."""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tinyvit_jax.data.sources import array_record_source
from tinyvit_jax.data.sources import image_folder
from tinyvit_jax.data.sources import prepare

SHARD_SIZE = 4

# Runs the converter but stalls forever in the Nth decode, inside the second shard, so
# the test can SIGKILL it at a known point: shard 0 done, shard 1 half written.
STALLING_CONVERTER = """
import sys, time
from tinyvit_jax.data.sources import decode, prepare
real_decode, calls = decode.decode_image, []
def stalling_decode(data):
  calls.append(1)
  if len(calls) == int(sys.argv[1]):
    time.sleep(600)
  return real_decode(data)
decode.decode_image = stalling_decode
sys.exit(prepare.run(sys.argv[2:]))
"""


@pytest.fixture
def folder(tmp_path):
  """Two classes of PNGs and JPEGs, one file of random bytes and one truncated JPEG."""
  root = tmp_path / 'images'
  rng = np.random.default_rng(0)
  for name in ('cat', 'dog'):
    os.makedirs(root / name)
    for i in range(3):
      Image.fromarray(rng.integers(0, 255, (10, 14, 3), np.uint8)).save(root / name / f'{i}.png')
      Image.fromarray(rng.integers(0, 255, (12, 8, 3), np.uint8)).save(root / name / f'{i}.jpg')
  (root / 'cat' / 'corrupt.jpg').write_bytes(rng.bytes(300))
  jpeg = (root / 'dog' / '0.jpg').read_bytes()
  (root / 'dog' / 'truncated.jpg').write_bytes(jpeg[:len(jpeg) // 2])
  return root


def _run_prepare(folder, out, capfd):
  code = prepare.run(['--folder', str(folder), '--out', str(out), '--shard-size', str(SHARD_SIZE)])
  captured = capfd.readouterr()
  assert code == 0, captured.err
  return captured


def test_skips_names_and_counts_undecodable_files(folder, tmp_path, capfd):
  out = tmp_path / 'prepared'
  captured = _run_prepare(folder, out, capfd)
  assert f'skipping {folder / "cat" / "corrupt.jpg"}' in captured.err
  assert f'skipping {folder / "dog" / "truncated.jpg"}' in captured.err
  assert 'Wrote 12 images of 2 classes in 4 shards' in captured.out
  assert 'Skipped 2 undecodable files' in captured.out
  metadata = array_record_source.read_metadata(str(out))
  assert metadata['skipped'] == ['cat/corrupt.jpg', 'dog/truncated.jpg']
  assert metadata['num_skipped'] == 2 and metadata['class_counts'] == [6, 6]


def test_prepared_records_match_the_folder(folder, tmp_path, capfd):
  out = tmp_path / 'prepared'
  _run_prepare(folder, out, capfd)
  prepared = array_record_source.ArrayRecordSource(str(out))
  _, files = image_folder.list_image_folder(str(folder))
  bad = ('cat/corrupt.jpg', 'dog/truncated.jpg')
  kept = [(path, label) for path, label in files if path not in bad]
  assert len(prepared) == len(kept) == 12 and prepared.class_names == ['cat', 'dog']
  for index, (path, label) in enumerate(kept):
    record = prepared[index]
    assert (record['label'], record['index']) == (label, index)
    with Image.open(folder / path) as image:  # the stored bytes are the original file
      assert np.array_equal(record['image'], np.asarray(image.convert('RGB')))


def test_resumes_after_sigkill_to_identical_shards(folder, tmp_path, capfd):
  straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
  _run_prepare(folder, straight, capfd)
  killed = subprocess.Popen([
      sys.executable, '-c', STALLING_CONVERTER,
      str(SHARD_SIZE + 2), '--folder',
      str(folder), '--out',
      str(resumed), '--shard-size',
      str(SHARD_SIZE)
  ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first_done = resumed / 'shard-00000-of-00004.array_record'
  second_partial = resumed / 'shard-00001-of-00004.array_record.tmp'
  deadline = time.monotonic() + 60
  while not (first_done.exists() and second_partial.exists()) and time.monotonic() < deadline:
    time.sleep(0.02)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  assert first_done.exists() and second_partial.exists(), 'the converter never reached shard 1'
  assert not (resumed / 'metadata.json').exists()
  with pytest.raises(FileNotFoundError, match=f'metadata.json is missing.*--out {resumed}'):
    array_record_source.ArrayRecordSource(str(resumed))
  first_mtime = first_done.stat().st_mtime_ns

  _run_prepare(folder, resumed, capfd)
  assert first_done.stat().st_mtime_ns == first_mtime  # kept, not rewritten
  assert sorted(os.listdir(resumed)) == sorted(os.listdir(straight))  # no temp files remain
  for name in os.listdir(straight):
    assert (resumed / name).read_bytes() == (straight / name).read_bytes(), name


def test_refuses_shards_of_another_conversion(folder, tmp_path, capfd):
  out = tmp_path / 'prepared'
  _run_prepare(folder, out, capfd)
  code = prepare.run(['--folder', str(folder), '--out', str(out), '--shard-size', '5'])
  assert code == 2
  assert f"'{out}' holds shards of another conversion" in capfd.readouterr().err


def test_full_disk_is_one_line_naming_the_shard_and_the_flag_to_move(folder, small_disk, capfd):
  out = os.path.join(small_disk.path, 'prepared')
  os.makedirs(out)
  small_disk.fill()
  code = prepare.run(['--folder', str(folder), '--out', out, '--shard-size', str(SHARD_SIZE)])
  shard = os.path.join(out, 'shard-00000-of-00004.array_record')
  assert code == 2
  assert capfd.readouterr().err.splitlines()[-1] == (
      f'error: no space left writing {shard} ({shutil.disk_usage(out).free:,} bytes free): '
      'free space or move --out, then rerun.')
  assert os.listdir(out) == []  # no temporary shard left


def test_missing_folder_is_an_error_naming_it(tmp_path, capfd):
  code = prepare.run(['--folder', str(tmp_path / 'nope'), '--out', str(tmp_path / 'out')])
  assert code == 2
  assert f"error: Image folder '{tmp_path / 'nope'}' does not exist" in capfd.readouterr().err


def test_check_lists_every_undecodable_file_and_writes_nothing(folder, tmp_path, capfd):
  before = sorted(os.listdir(tmp_path))
  assert prepare.run(['--folder', str(folder), '--check']) == 1
  captured = capfd.readouterr()
  listed = sorted(
      line.split(': ')[1] for line in captured.err.splitlines() if line.startswith('undecodable: '))
  assert listed == [str(folder / 'cat' / 'corrupt.jpg'), str(folder / 'dog' / 'truncated.jpg')]
  assert captured.out.strip() == f'2 undecodable images in {folder}.'
  assert sorted(os.listdir(tmp_path)) == before
  (folder / 'cat' / 'corrupt.jpg').unlink()
  (folder / 'dog' / 'truncated.jpg').unlink()
  assert prepare.run(['--folder', str(folder), '--check']) == 0
  assert prepare.run(['--folder', str(folder)]) == 2  # neither --out nor --check
