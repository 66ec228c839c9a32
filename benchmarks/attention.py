"""Attention formulations inside whole models: forward and AdamW train-step images/s.

  python benchmarks/attention.py   # tiny_vit_5m_224, deit_tiny_distilled_patch16_224
  python benchmarks/attention.py --quick   # smoke test: batch 4, 64x64, 2 rounds

For each model, benchmarks/models.py's jitted forward and train step of our model is
compiled once under each setting of the attention switch (tinyvit_jax.models.attention),
then the formulations run in alternating rounds; the table gives medians over rounds with
(min-max), and each one's ratio to the first formulation listed.
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models as bench  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from tinyvit_jax.models import attention, model_info  # pylint: disable=g-import-not-at-top


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', default='tiny_vit_5m_224,deit_tiny_distilled_patch16_224')
  parser.add_argument('--impls', default='einsum,xla',
                      help=f'comma-separated attention formulations, of {attention.IMPLS}')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--img-size', type=int, default=None)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--min-seconds', type=float, default=1.0)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--json', default='benchmarks/out/attention.json')
  parser.add_argument('--quick', action='store_true')
  args = parser.parse_args(argv)
  if args.quick:
    args.batch, args.img_size, args.rounds, args.warmup, args.min_seconds = 4, 64, 2, 1, 0.2
  args.models, args.impls = args.models.split(','), args.impls.split(',')
  args.conv_impl = 'auto'  # what bench.ours_calls reads besides dtype
  return args


def benchmark_model(name, args) -> list[dict]:
  img_size = args.img_size or model_info(name).input_size
  rng = np.random.default_rng(0)
  images = rng.standard_normal((args.batch, img_size, img_size, 3), dtype=np.float32)
  labels = rng.integers(0, 1000, args.batch).astype(np.int32)
  calls = {}
  for impl in args.impls:
    calls[impl] = bench.ours_calls(name, args, img_size, images, labels)
    with attention.attention_impl(impl):  # read when the first call traces
      for mode in bench.MODES:
        seconds = bench.first_call_seconds(calls[impl][mode])
        for _ in range(args.warmup):
          calls[impl][mode]()
        print(f'  {name} {impl:6s} {mode:7s} first call: {seconds:.1f} s', flush=True)
  rates = {(impl, mode): [] for impl in args.impls for mode in bench.MODES}
  for r in range(args.rounds):
    for (impl, mode), values in rates.items():
      values.append(bench.images_per_second(calls[impl][mode], args.batch, args.min_seconds))
    print(
        f'  {name} round {r + 1}/{args.rounds}: '
        + ', '.join(f'{impl}/{mode} {v[-1]:.1f}' for (impl, mode), v in rates.items()), flush=True)
  rows = []
  for mode in bench.MODES:
    row = {'model': name, 'mode': mode, 'batch': args.batch, 'img_size': img_size}
    for impl in args.impls:
      row[impl] = bench.summary(rates[impl, mode])
      row[f'{impl}_over_{args.impls[0]}'] = (row[impl]['median']
                                             / statistics.median(rates[args.impls[0], mode]))
    rows.append(row)
  return rows


def format_table(rows, impls) -> str:
  lines = [
      '| model | mode | ' + ' | '.join(f'{i} img/s' for i in impls) + ' | '
      + ' | '.join(f'{i}/{impls[0]}' for i in impls[1:]) + ' |', '|---|---|' + '---|' *
      (2 * len(impls) - 1)
  ]
  for row in rows:
    cells = [f'{row[i]["median"]:.1f} ({row[i]["min"]:.1f}-{row[i]["max"]:.1f})' for i in impls]
    ratios = [f'{row[f"{i}_over_{impls[0]}"]:.2f}x' for i in impls[1:]]
    lines.append(f'| {row["model"]} | {row["mode"]} | ' + ' | '.join(cells + ratios) + ' |')
  return '\n'.join(lines)


def main(argv=None):
  args = parse_args(argv)
  bench.limit_threads(args.threads)
  env = bench.environment(args)
  print(' '.join(f'{k}={v}' for k, v in env.items()))
  rows = [row for name in args.models for row in benchmark_model(name, args)]
  env['load_average_end'] = os.getloadavg()
  print()
  print(format_table(rows, args.impls))
  os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
  with open(args.json, 'w') as f:
    config = {k: v for k, v in vars(args).items() if k != 'json'}
    json.dump({'environment': env, 'config': config, 'results': rows}, f, indent=1)
  print(f'Wrote {args.json}')


if __name__ == '__main__':
  main()
