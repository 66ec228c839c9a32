"""An image that does not decode, met mid-epoch (#19 item 4). One policy for every source:
refuse, naming the file, the example index and the repair. The save pass and the student
read through the same loader, so they stop at the same example with the same line; a
rerun after the repair resumes from the last checkpoint."""
import functools
import os

import grain
import numpy as np
import pytest
from array_record.python import array_record_module
from PIL import Image

import train_config
import workdirs
from tinyvit_jax.data import loader
from tinyvit_jax.data import order
from tinyvit_jax.data.augment import host_crop
from tinyvit_jax.data.sources import array_record_source
from tinyvit_jax.data.sources import decode
from tinyvit_jax.data.sources import digits
from tinyvit_jax.data.sources import image_folder
from tinyvit_jax.data.sources import prepare

SEED, BATCH = 3, 4


def _folder(root, source, count: int):
  """The first ``count`` examples of ``source`` as ROOT/<label>/<index>.png; the file
  order is the example order (labels are sorted first)."""
  order_by_label = sorted(range(count), key=lambda i: (source[i]['label'], i))
  for i in order_by_label:
    record = source[i]
    os.makedirs(root / str(record['label']), exist_ok=True)
    Image.fromarray(record['image']).save(root / str(record['label']) / f'{i:05d}.png')
  return root


def _bad_index(n: int, step: int) -> int:
  """The example read first in training step ``step`` of epoch 0."""
  return int(order.epoch_permutation(SEED, 0, n)[step * BATCH])


def _plant_in_folder(tmp_path):
  root = _folder(tmp_path / 'images', digits.DigitsSource('train', image_size=16), 24)
  source = image_folder.ImageFolderSource(str(root))
  bad = _bad_index(len(source), 3)
  path = os.path.join(root, source.files[bad][0])
  with open(path, 'r+b') as f:
    f.truncate(60)  # a PNG cut short: the header reads, the pixels do not
  return str(root), bad, [
      f'Image {path!r} (example {bad}, epoch 0) does not decode: ', 'under the same name',
      f'prepare --folder {root} --check'
  ]


def _plant_in_array_record(tmp_path):
  """A prepared folder whose one shard is rewritten with one image's bytes damaged, as
  after a disk fault: prepare itself never writes an undecodable record."""
  root = _folder(tmp_path / 'images', digits.DigitsSource('train', image_size=16), 24)
  out = tmp_path / 'prepared'
  prepare.prepare(str(root), str(out), shard_size=10)
  source = array_record_source.ArrayRecordSource(str(out))
  bad = _bad_index(len(source), 3)
  shard, row = bad // 10, bad % 10
  shard_file = str(out / f'shard-{shard:05d}-of-00003.array_record')
  shard_records = grain.sources.ArrayRecordDataSource([shard_file])
  records = [shard_records[i] for i in range(len(shard_records))]
  label, name, data = array_record_source.decode_record(records[row])
  records[row] = array_record_source.encode_record(label, name, data[:60])
  writer = array_record_module.ArrayRecordWriter(shard_file, 'group_size:1,uncompressed')
  for record in records:
    writer.write(record)
  writer.close()
  return str(out), bad, [
      f"Record {row} of {shard_file!r} (prepared from '{name}') "
      f'(example {bad}, epoch 0) does not decode: ', f'delete {shard_file!r} and its .json',
      'write any logit store again'
  ]


SOURCES = {
    'folder': (_plant_in_folder, lambda root: image_folder.ImageFolderSource(root)),
    'folder of bytes':
        (_plant_in_folder, lambda root: image_folder.ImageFolderSource(root, decode=False)),
    'array_record': (_plant_in_array_record, array_record_source.ArrayRecordSource),
}


@pytest.mark.parametrize('name', SOURCES)
def test_the_save_pass_and_the_student_refuse_the_same_example_the_same_way(name, tmp_path):
  plant, make = SOURCES[name]
  root, bad, expected = plant(tmp_path)
  source, crop = make(root), host_crop.TrainCrop(size=12)
  n = len(source)
  with pytest.raises(decode.UndecodableImage) as student:  # grain workers, as in training
    for batch in loader.train_batches(source, seed=SEED, global_batch=BATCH, transform=crop,
                                      num_workers=1):
      assert bad not in batch['index']
  with pytest.raises(decode.UndecodableImage) as save_pass:  # the save pass's own reads
    for batch in loader.position_batches(source, seed=SEED, epoch=0, positions=np.arange(n),
                                         batch=BATCH, transform=crop):
      assert bad not in batch['index']
  assert str(student.value) == str(save_pass.value)
  line = str(student.value)
  assert '\n' not in line and line.startswith(expected[0]), line
  assert all(part in line for part in expected[1:]), line


def test_main_stops_in_one_line_after_its_last_checkpoint_and_resumes_once_repaired(tmp_path):
  """The student of tests/helpers/train_config.py on 320 digits read as a folder (5 steps at batch
  64, a checkpoint every 2): the image that step 4 reads first is cut short. The loader
  reads two batches ahead, yet steps 1-3 are made and saved."""
  source = digits.DigitsSource('train')
  root = _folder(tmp_path / 'images', source, 320)
  folder = image_folder.ImageFolderSource(str(root))
  config = train_config.get_config()
  bad = int(order.epoch_permutation(config.seed, 0, len(folder))[3 * 64])
  path = os.path.join(root, folder.files[bad][0])
  with open(path, 'rb') as f:
    good = f.read()
  with open(path, 'wb') as f:
    f.write(good[:60])
  workdir = tmp_path / 'run'
  run = functools.partial(workdirs.run_main, workdir, '--config.checkpoint_every_steps=2',
                          config=f'tests/helpers/train_config.py:{root}')
  line = workdirs.error_line(run(check=False))
  assert line.startswith(f'error: Image {path!r} (example {bad}, epoch 0) does not decode: ')
  assert line.endswith('The run stopped before the step that needs it; rerun: it resumes from '
                       f'step 3 in {workdir}/checkpoints.')
  assert workdirs.checkpoint_steps(workdir) == [2, 3]  # step 3 saved on the stop
  with open(path, 'wb') as f:
    f.write(good)
  run()
  assert workdirs.resumed_from(workdir) == 3
  assert sorted(workdirs.step_losses(workdir)) == [1, 2, 3, 4, 5]
