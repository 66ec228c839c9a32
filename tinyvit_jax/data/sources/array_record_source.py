"""The prepared-folder format (ArrayRecord shards + metadata.json) and its reader.

``python -m tinyvit_jax.data.sources.prepare`` writes it; ``ArrayRecordSource`` reads it. Each
record is one example: a little-endian header (int32 label, uint16 length of the path),
the image's path relative to the folder root in UTF-8, then the original encoded image
bytes, untouched, so preparing costs no quality and no re-encoding. ``metadata.json`` is
written last and marks the conversion complete.
"""
import bisect
import itertools
import json
import os
import struct

import grain

from tinyvit_jax.data.sources import decode
from tinyvit_jax.data.sources import missing

FORMAT_VERSION = 1
METADATA_FILE = 'metadata.json'
_HEADER = struct.Struct('<iH')


def encode_record(label: int, path: str, image_bytes: bytes) -> bytes:
  name = path.encode('utf-8')
  return _HEADER.pack(label, len(name)) + name + image_bytes


def decode_record(record: bytes) -> tuple[int, str, bytes]:
  """(label, relative path, encoded image bytes) of one record."""
  label, name_length = _HEADER.unpack_from(record)
  start = _HEADER.size + name_length
  return label, record[_HEADER.size:start].decode('utf-8'), record[start:]


def read_metadata(directory: str) -> dict:
  path = os.path.join(directory, METADATA_FILE)
  if not os.path.exists(path):
    raise missing.NoData(
        f'{path} is missing, so {directory!r} is not a complete prepared dataset. Run '
        f'`python -m tinyvit_jax.data.sources.prepare --folder ROOT --out {directory}` '
        '(it resumes an interrupted conversion).')
  with open(path) as f:
    metadata = json.load(f)
  if metadata.get('format_version') != FORMAT_VERSION:
    raise missing.UnusableData(f'{path} has format_version {metadata.get("format_version")}, '
                               f'this reader reads {FORMAT_VERSION}; prepare the folder again.')
  return metadata


class ArrayRecordSource:
  """Random-access source over a prepared dir: dict(image=uint8 HWC RGB, label, index).

  ``index`` is the record's position across the shards in order, which is the sorted
  folder order without the skipped files.
  """

  def __init__(self, directory: str):
    metadata = read_metadata(directory)
    self.class_names = metadata['class_names']
    self.num_classes = len(self.class_names)
    if not metadata['num_records']:
      raise missing.UnusableData(f'The prepared dataset {directory!r} is empty: all '
                                 f'{metadata["num_skipped"]} images were skipped as undecodable.')
    self.directory = directory
    self._shards = [shard['file'] for shard in metadata['shards']]
    self._shard_starts = list(
        itertools.accumulate([shard['num_records'] for shard in metadata['shards']], initial=0))
    self._records = grain.sources.ArrayRecordDataSource(
        [os.path.join(directory, shard) for shard in self._shards])

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    label, _, image_bytes = decode_record(self._records[index])
    return dict(image=decode.decode_image(image_bytes), label=label, index=int(index))

  def locate(self, index: int) -> tuple[str, str]:
    """(Where example ``index`` lives, how to repair it when it does not decode.)"""
    shard = bisect.bisect_right(self._shard_starts, index) - 1
    _, path, _ = decode_record(self._records[index])
    file = os.path.join(self.directory, self._shards[shard])
    return (f'Record {index - self._shard_starts[shard]} of {file!r} (prepared from {path!r})',
            f'The prepared copy is damaged: delete {file!r} and its .json and rerun `python '
            '-m tinyvit_jax.data.sources.prepare` with the same --folder and --out '
            f'{self.directory}, which rewrites that shard from the folder (an original that '
            'does not decode either is skipped, which shifts the later indexes: write any '
            'logit store again).')
