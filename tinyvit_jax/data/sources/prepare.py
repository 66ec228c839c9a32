"""Converts an image folder to ArrayRecord shards, the fast way to read a big folder.

  python -m tinyvit_jax.data.sources.prepare --folder ROOT --out DIR [--shard-size N]
  python -m tinyvit_jax.data.sources.prepare --folder ROOT --check

ROOT is laid out as ROOT/<class>/<image>. The output is read by ``ArrayRecordSource``.

Undecodable files (corrupt, truncated, not an image) are skipped: each is reported by
path as it is found, and the count and list go to DIR/metadata.json. ``--check`` only
lists them (exit status 1 if there are any), for a folder read in place: there, a run
stops at the first one it meets, naming it.

A killed conversion resumes. Shard i holds files [i*N, (i+1)*N) of the sorted folder
listing, so shard contents never depend on earlier shards. Each shard is written under a
temporary name and renamed when complete; then a sidecar JSON naming the files it
covers marks it done. A rerun keeps every shard whose sidecar matches the current
listing and redoes the others. metadata.json is written last and marks the conversion complete.
"""
import argparse
import glob
import json
import os
import sys

from array_record.python import array_record_module
from tqdm import tqdm

from tinyvit_jax import errors
from tinyvit_jax import writes
from tinyvit_jax.data.sources import array_record_source
from tinyvit_jax.data.sources import decode
from tinyvit_jax.data.sources import image_folder

# Records are read one at a time in random order, and the images are already compressed.
_WRITER_OPTIONS = 'group_size:1,uncompressed'


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _read_and_decode(path: str) -> tuple[bytes, decode.UndecodableImage | None]:
  """The file's bytes, and why they do not decode (None when they do)."""
  with open(path, 'rb') as f:
    data = f.read()
  try:
    decode.decode_image(data)
  except decode.UndecodableImage as error:
    return data, error
  return data, None


def check(folder: str) -> list[str]:
  """The undecodable images of ``folder`` (paths relative to it), each reported as found."""
  _, files = image_folder.list_image_folder(folder)
  bad = []
  for name, _ in tqdm(files, unit='img', desc=f'checking {folder}'):
    _, error = _read_and_decode(os.path.join(folder, name))
    if error:
      tqdm.write(f'undecodable: {os.path.join(folder, name)}: {error}', file=sys.stderr)
      bad.append(name)
  return bad


def _write_shard(folder: str, files: list, path: str, progress: tqdm) -> dict:
  """Writes one shard under a temporary name, renames it, then writes its summary."""
  skipped = []
  with writes.replacing(path, move='--out') as tmp:
    writer = array_record_module.ArrayRecordWriter(tmp, _WRITER_OPTIONS)
    for name, label in files:
      data, error = _read_and_decode(os.path.join(folder, name))
      if error:
        tqdm.write(f'skipping {os.path.join(folder, name)}: {error}', file=sys.stderr)
        skipped.append(name)
      else:
        writer.write(array_record_source.encode_record(label, name, data))
      progress.update()
    writer.close()
  summary = dict(files=[list(file) for file in files], num_records=len(files) - len(skipped),
                 skipped=skipped)
  # last: the shard's completion marker
  writes.write_json(path + '.json', summary, sort_keys=True, move='--out')
  return summary


def _finished_shard(path: str, files: list) -> dict | None:
  """The summary of a shard a previous run completed for these same files, else None."""
  if not (os.path.exists(path) and os.path.exists(path + '.json')):
    return None
  summary = _read_json(path + '.json')
  return summary if summary['files'] == [list(file) for file in files] else None


class PrepareError(errors.UserError, ValueError):
  """A conversion refused: its arguments, or an --out of another conversion."""


def prepare(folder: str, out: str, shard_size: int = 1000) -> dict:
  """Converts (or finishes converting) ``folder`` into ``out``; returns the metadata."""
  if shard_size < 1:
    raise PrepareError(f'--shard-size {shard_size} must be at least 1.')
  class_names, files = image_folder.list_image_folder(folder)
  chunks = [files[start:start + shard_size] for start in range(0, len(files), shard_size)]
  names = [f'shard-{i:05d}-of-{len(chunks):05d}.array_record' for i in range(len(chunks))]
  os.makedirs(out, exist_ok=True)
  foreign = sorted(
      set(map(os.path.basename, glob.glob(os.path.join(out, 'shard-*.array_record')))) - set(names))
  if foreign:
    raise PrepareError(f'{out!r} holds shards of another conversion ({foreign[0]}, ...); '
                       'use a new --out, or delete them to convert again.')
  for stale in glob.glob(os.path.join(out, 'shard-*.tmp')):
    os.remove(stale)
  metadata_path = os.path.join(out, array_record_source.METADATA_FILE)
  if os.path.exists(metadata_path):
    os.remove(metadata_path)
  summaries = []
  with tqdm(total=len(files), unit='img', desc=f'preparing {out}') as progress:
    for name, chunk in zip(names, chunks):
      path = os.path.join(out, name)
      summary = _finished_shard(path, chunk)
      if summary is None:
        summary = _write_shard(folder, chunk, path, progress)
      else:
        progress.update(len(chunk))
      summaries.append(summary)
  skipped = [name for summary in summaries for name in summary['skipped']]
  skipped_names = set(skipped)
  class_counts = [0] * len(class_names)
  for name, label in files:
    if name not in skipped_names:
      class_counts[label] += 1
  metadata = dict(
      format_version=array_record_source.FORMAT_VERSION, class_names=class_names,
      class_counts=class_counts, num_records=sum(summary['num_records'] for summary in summaries),
      shards=[
          dict(file=name, num_records=summary['num_records'])
          for name, summary in zip(names, summaries)
      ], num_skipped=len(skipped), skipped=skipped)
  writes.write_json(metadata_path, metadata, sort_keys=True, move='--out')
  return metadata


def _parse_args(argv):
  p = argparse.ArgumentParser(prog='python -m tinyvit_jax.data.sources.prepare',
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--folder', required=True, help='image folder, laid out ROOT/<class>/<image>')
  p.add_argument('--out', help='output directory for shards and metadata.json')
  p.add_argument('--check', action='store_true',
                 help='only list the undecodable images; write nothing')
  p.add_argument('--shard-size', type=int, default=1000, help='images per shard')
  return p.parse_args(argv)


def run(argv=None) -> int:
  args = _parse_args(sys.argv[1:] if argv is None else argv)
  if args.check == bool(args.out):
    print('error: give --out DIR to convert, or --check to list undecodable images.',
          file=sys.stderr)
    return 2
  try:
    if args.check:
      bad = check(args.folder)
    else:
      metadata = prepare(args.folder, args.out, args.shard_size)
  except errors.UserError as error:
    return errors.refuse(error, status=2)
  if args.check:
    print(f'{len(bad)} undecodable images in {args.folder}.')
    return 1 if bad else 0
  print(f'Wrote {metadata["num_records"]} images of {len(metadata["class_names"])} classes '
        f'in {len(metadata["shards"])} shards to {args.out}. Skipped {metadata["num_skipped"]} '
        f'undecodable files (listed under "skipped" in metadata.json).')
  return 0


if __name__ == '__main__':
  sys.exit(run())
