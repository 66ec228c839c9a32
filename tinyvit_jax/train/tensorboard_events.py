"""TensorBoard event files written by hand: TFRecord framing around protobuf ``Event``s.

The three messages a run writes (the file version, a purge marker, scalars) are a few
fields each, so they are encoded here rather than through tensorboardX, whose import
loads torch: seconds at the start of every run. The writes happen whole event by whole
event in the caller's thread (tensorboardX's ``SummaryWriter`` writes from a thread fed
by a bounded queue: once a full disk has killed that thread, the next write, or the
exit, waits forever).
"""
import os
import socket
import struct
import time


def _crc32c_table() -> tuple:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    table.append(crc)
  return tuple(table)


_CRC32C = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
  """TFRecord's checksum: CRC-32C (Castagnoli), rotated right by 15, plus a constant."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  crc ^= 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
  out = bytearray()
  while value > 0x7F:
    out.append(value & 0x7F | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  """A length-delimited field (wire type 2): a string or a message."""
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(wall_time: float, step: int = 0, *, file_version: str = '', scalar: tuple = (),
          purge: bool = False) -> bytes:
  """``tensorboard.Event`` as protobuf bytes, fields in number order and zeros left out,
  as protobuf itself writes them: wall_time (1), step (2), then one of file_version (3),
  summary (5) holding one ``Value`` of tag (1) and simple_value (2) given as ``scalar``
  (tag, value), or session_log (7) with status START (1), which makes TensorBoard hide
  the earlier events from ``step`` on."""
  out = b'\x09' + struct.pack('<d', wall_time)
  if step:
    out += b'\x10' + _varint(step)
  if file_version:
    out += _field(3, file_version.encode())
  if scalar:
    tag, value = scalar
    out += _field(5, _field(1, _field(1, tag.encode()) + b'\x15' + struct.pack('<f', value)))
  if purge:
    out += _field(7, b'\x08\x01')
  return out


class EventFile:
  """A new event file in ``directory``; with ``purge_step``, TensorBoard hides the
  events of earlier files from that step on (a resumed run redoes them)."""

  def __init__(self, directory: str, purge_step: int | None):
    os.makedirs(directory, exist_ok=True)
    name = f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}'
    self._file = open(os.path.join(directory, name), 'ab', buffering=0)
    events = [event(time.time(), file_version='brain.Event:2')]
    if purge_step is not None:
      events.append(event(time.time(), purge_step, purge=True))
    self._write(events)

  def write_scalars(self, step: int, scalars: dict) -> None:
    wall_time = time.time()
    self._write([event(wall_time, step, scalar=(name, value)) for name, value in scalars.items()])

  def close(self) -> None:
    self._file.close()

  def _write(self, events: list) -> None:
    """TFRecord framing: length, its masked CRC-32C, the event, its masked CRC-32C."""
    records = []
    for data in events:
      header = struct.pack('<Q', len(data))
      records += [
          header,
          struct.pack('<I', masked_crc32c(header)), data,
          struct.pack('<I', masked_crc32c(data))
      ]
    view = memoryview(b''.join(records))
    while view:  # unbuffered: a full disk raises here, and close() has nothing left to write
      view = view[self._file.write(view):]
