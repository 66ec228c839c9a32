"""Monitoring: JSONL round trip and resume truncation, TensorBoard events read back from
their TFRecord framing (and each event's bytes against protobuf's, through tensorboardX's
messages), the curves PNG and the summary table."""
import glob
import json
import os
import struct
import threading

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from tensorboardX.proto import event_pb2
from tensorboardX.proto import summary_pb2

from tinyvit_jax import writes
from tinyvit_jax.train import metrics
from tinyvit_jax.train import tensorboard_events


def _crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli, reflected 0x82F63B78), bit by bit: slow and obviously right."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """TFRecord's mask: rotate right by 15, add a constant."""
  crc = _crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_crc32c_check_value():
  assert _crc32c(b'123456789') == 0xE3069283


@settings(max_examples=50, deadline=None)
@given(wall_time=st.floats(1.0, 4e9), step=st.integers(0, 2**62),
       tag=st.text(min_size=1, max_size=200), value=st.floats(width=32, allow_nan=False),
       kind=st.sampled_from(['file_version', 'scalar', 'purge']))
def test_each_event_is_the_bytes_protobuf_writes(wall_time, step, tag, value, kind):
  ours = tensorboard_events.event(
      wall_time, step, **{
          'file_version': dict(file_version=tag),
          'scalar': dict(scalar=(tag, value)),
          'purge': dict(purge=True)
      }[kind])
  reference = event_pb2.Event(
      wall_time=wall_time, step=step, **{
          'file_version':
              dict(file_version=tag),
          'scalar':
              dict(summary=summary_pb2.Summary(
                  value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])),
          'purge':
              dict(session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)),
      }[kind])
  assert ours == reference.SerializeToString()
  assert tensorboard_events.masked_crc32c(ours) == masked_crc32c(ours)


def _read_events(path) -> list:
  """Events of a TFRecord file, with both CRCs checked."""
  events = []
  with open(path, 'rb') as f:
    while header := f.read(12):
      length, length_crc = struct.unpack('<QI', header)
      assert length_crc == masked_crc32c(header[:8])
      data = f.read(length)
      (data_crc,) = struct.unpack('<I', f.read(4))
      assert data_crc == masked_crc32c(data)
      events.append(event_pb2.Event.FromString(data))
  return events


def _scalars(workdir) -> list:
  """(tag, step, value) of every scalar in the run's event files, in write order."""
  out = []
  for path in sorted(glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents.*'))):
    for event in _read_events(path):
      for value in event.summary.value:
        out.append((value.tag, event.step, value.simple_value))
  return out


@settings(max_examples=10, deadline=None)
@given(losses=st.lists(st.floats(0, 10, width=32), min_size=1, max_size=12),
       resume=st.integers(0, 12))
def test_jsonl_round_trip_and_truncation_on_resume(tmp_path_factory, losses, resume):
  workdir = str(tmp_path_factory.mktemp('run'))
  writer = metrics.MetricsWriter(workdir)
  for step, loss in enumerate(losses, 1):
    writer.write(step, loss=np.float32(loss), lr=1e-3 * step)
  writer.close()
  rows = metrics.read_metrics(workdir)
  assert [r['step'] for r in rows] == list(range(1, len(losses) + 1))
  assert [r['loss'] for r in rows] == [float(np.float32(x)) for x in losses]
  resumed = metrics.MetricsWriter(workdir)
  resumed.truncate_after(resume)
  resumed.write(resume + 1, loss=-1.0)
  resumed.close()
  rows = metrics.read_metrics(workdir)
  kept = min(resume, len(losses))
  assert [r['step'] for r in rows] == list(range(1, kept + 1)) + [resume + 1]
  assert rows[-1]['loss'] == -1.0


def test_torn_last_line_is_skipped(tmp_path):
  writer = metrics.MetricsWriter(str(tmp_path))
  writer.write(1, loss=1.0)
  writer.close()
  with open(tmp_path / metrics.METRICS_FILE, 'a') as f:
    f.write('{"step": 2, "lo')
  assert [r['step'] for r in metrics.read_metrics(str(tmp_path))] == [1]
  metrics.truncate_jsonl(str(tmp_path / metrics.METRICS_FILE), 5)
  assert (tmp_path / metrics.METRICS_FILE).read_text() == '{"step": 1, "loss": 1.0}\n'


def test_full_disk_names_the_file_and_leaves_only_whole_rows(small_disk):
  """...and leaves nothing to wait on: the writer runs no thread, so a full disk raises at
  the write, never in a thread whose death leaves the next write or the exit waiting."""
  workdir = os.path.join(small_disk.path, 'run')
  threads = threading.enumerate()
  writer = metrics.MetricsWriter(workdir)
  writer.write(1, loss=1.0)
  small_disk.fill()
  with pytest.raises(
      writes.DiskFull, match=r'^no space left writing .*/run/'
      r'(metrics\.jsonl|tensorboard) \(\d[\d,]* bytes free\): free space or '
      r'move --workdir, then rerun\.$'):
    for step in range(2, 100_000):  # the file's last page takes rows until it is full
      writer.write(step, loss=1.0, note='x' * 100)
  steps = [row['step'] for row in metrics.read_metrics(workdir)]
  assert steps == list(range(1, len(steps) + 1))
  with pytest.raises(writes.DiskFull, match='metrics.jsonl'):
    metrics.truncate_jsonl(writer.path, 1)
  assert sorted(os.listdir(workdir)) == ['metrics.jsonl', 'tensorboard']
  writer.close()
  assert not set(threading.enumerate()) - set(threads)  # no thread of the writer's


def test_tensorboard_events_read_back(tmp_path):
  workdir = str(tmp_path)
  writer = metrics.MetricsWriter(workdir)
  written = []
  for step in range(1, 6):
    values = dict(loss=1.0 / step, images_per_second=100.0 + step)
    writer.write(step, **values, note='text is not a scalar')
    written += [(tag, step, v) for tag, v in values.items()]
  writer.write(5, eval_top1=0.75, eval_top5=0.95, eval_examples=40)
  written += [('eval_top1', 5, 0.75), ('eval_top5', 5, 0.95), ('eval_examples', 5, 40)]
  writer.close()
  got = _scalars(workdir)
  assert [(t, s) for t, s, _ in got] == [(t, s) for t, s, _ in written]
  np.testing.assert_allclose([v for _, _, v in got], [v for _, _, v in written], rtol=1e-6)


def test_resume_marks_the_event_file_with_a_purge_step(tmp_path):
  workdir = str(tmp_path)
  writer = metrics.MetricsWriter(workdir)
  for step in range(1, 5):
    writer.write(step, loss=float(step))
  writer.close()
  resumed = metrics.MetricsWriter(workdir)
  resumed.truncate_after(2)
  resumed.write(3, loss=30.0)
  resumed.close()
  files = sorted(glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents.*')))
  second = _read_events(files[-1])
  # TensorBoard drops the earlier events at or after the step of a SessionLog.START.
  starts = [
      e.step
      for e in second
      if e.HasField('session_log') and e.session_log.status == event_pb2.SessionLog.START
  ]
  assert starts == [3]


def test_only_process_zero_writes(tmp_path):
  writer = metrics.MetricsWriter(str(tmp_path / 'other'), is_main=False)
  writer.truncate_after(0)
  writer.write(1, loss=1.0)
  writer.close()
  assert not os.path.exists(tmp_path / 'other')


def test_the_curves_are_the_logged_series_and_the_png_draws_them(tmp_path):
  workdir = str(tmp_path)
  writer = metrics.MetricsWriter(workdir)
  losses = {step: 2.0 * np.exp(-step / 10) for step in range(1, 41)}
  losses[17] = float('nan')  # a diverged step is left out, not drawn as a gap
  for step, loss in losses.items():
    writer.write(step, loss=loss, epoch=step / 10)
    if step % 10 == 0:
      writer.write(step, eval_top1=step / 50, eval_top5=step / 45, eval_loss=1.0 / step,
                   eval_teacher_agreement=step / 42, eval_teacher_kl=0.5 / step)
  writer.close()
  series = metrics.curves(metrics.read_metrics(workdir))
  kept = [step for step in losses if step != 17]
  assert series['train loss'] == (kept, pytest.approx([losses[s] for s in kept]))
  assert series['eval loss'] == ([10, 20, 30, 40], pytest.approx([0.1, 0.05, 1 / 30, 0.025]))
  assert series['top-1'] == ([10, 20, 30, 40], pytest.approx([0.2, 0.4, 0.6, 0.8]))
  assert series['top-5'][0] == [10, 20, 30, 40]
  assert series['teacher agreement'] == ([10, 20, 30,
                                          40], pytest.approx([10 / 42, 20 / 42, 30 / 42, 40 / 42]))
  assert series['teacher KL'] == ([10, 20, 30, 40], pytest.approx([0.05, 0.025, 1 / 60, 0.0125]))

  from PIL import Image
  with Image.open(metrics.plot_curves(workdir, str(tmp_path / 'curves.png'))) as image:
    assert image.format == 'PNG' and image.size == (1000, 400)
    pixels = np.asarray(image.convert('RGB'))
  # Each panel draws three series, in matplotlib's first three colours (C0 blue, C1
  # orange, C2 green): train and eval loss and teacher KL on the left, top-1, top-5 and
  # teacher agreement on the right.
  for panel in (pixels[:, :500], pixels[:, 500:]):
    for colour in ((31, 119, 180), (255, 127, 14), (44, 160, 44)):
      assert np.any(np.all(np.abs(panel.astype(int) - colour) < 30, axis=-1)), colour


def test_curves_of_a_run_without_eval_rows(tmp_path):
  workdir = str(tmp_path)
  writer = metrics.MetricsWriter(workdir)
  writer.write(1, loss=1.0)
  writer.close()
  series = metrics.curves(metrics.read_metrics(workdir))
  assert series == {
      'train loss': ([1], [1.0]),
      'eval loss': ([], []),
      'teacher KL': ([], []),
      'top-1': ([], []),
      'top-5': ([], []),
      'teacher agreement': ([], [])
  }
  assert os.path.exists(metrics.plot_curves(workdir, str(tmp_path / 'c.png')))


def test_summary_table():
  rows = [
      dict(model='tiny_vit_5m_224', role='teacher', top1=0.9512345, top5=1.0,
           images_per_second=123.456),
      dict(model='tiny_vit_5m_224', role='FPD student', top1=0.8, top5=None,
           images_per_second=12345.6)
  ]
  lines = metrics.summary_table(rows).splitlines()
  assert len(lines) == 4 and set(lines[1]) == {'-', ' '}
  assert lines[0].split() == ['model', 'role', 'top1', 'top5', 'images_per_second']
  assert lines[2].split() == ['tiny_vit_5m_224', 'teacher', '0.9512', '1.0', '123.5']
  assert lines[3].split() == ['tiny_vit_5m_224', 'FPD', 'student', '0.8000', '-', '12,346']
  # Fixed width: every column starts where its header does, numbers end where it ends.
  assert lines[2].index('teacher') == lines[3].index('FPD') == lines[0].index('role')
  assert lines[2].endswith('123.5') and len(lines[2]) == len(lines[3]) == len(lines[1])
  assert metrics.summary_table(rows, columns=['role',
                                              'top1']).splitlines()[0].split() == ['role', 'top1']


def test_jsonl_rows_are_plain_json(tmp_path):
  import jax.numpy as jnp
  writer = metrics.MetricsWriter(str(tmp_path))
  writer.write(np.int64(3), loss=jnp.float32(0.5), count=np.int32(7), flag=True)
  writer.close()
  line = (tmp_path / metrics.METRICS_FILE).read_text()
  assert json.loads(line) == dict(step=3, loss=0.5, count=7, flag=True)
