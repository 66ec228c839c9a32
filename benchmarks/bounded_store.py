"""Bounded logit stores on the digits: what a student loses when its store holds M
epochs of views, replayed (``distill.views_per_example``), instead of one per epoch.

  python benchmarks/bounded_store.py [--workdir /tmp/fpd_vs_online] [--seeds 0,1,2]

The quickstart's teacher (TinyViT-5M at 32 px, 10 epochs on labels; the one
``fpd_vs_online.py`` trains in the same default workdir, reused if there) and the
quickstart's 0.5M-parameter FPD student (k = 3, soft-target cross-entropy, no labels),
12 epochs per seed, with the same data, augmentation (RandAugment m6, erasing), budget
and seed in every arm:
- ``per_epoch``: its store holds 12 epochs of views, one per epoch trained (saved by the
  save pass);
- ``views_M``, M = 1, 2, 5, 10: a bounded store of M epochs, which the student's 12
  epochs replay in a keyed order (``order.stored_epoch``). Each is the per-epoch store's
  first M epochs, which are byte for byte what a save pass with that M writes
  (tests/test_distill_student.py), so one save pass per seed serves every arm.

Prints, and writes to ``benchmarks/out/bounded_store.json``: held-out top-1 (360 test
digits) per arm and seed, mean and standard deviation, and each store's bytes on disk.
The workdir keeps finished runs, so a rerun goes on where it stopped.
"""
import argparse
import json
import os

import ml_collections
import numpy as np
from absl import flags

import fpd  # benchmarks/, the script's folder
import fpd_vs_online
from tinyvit_jax import compile_cache
from tinyvit_jax import main as main_lib
from tinyvit_jax.distill import store
from tinyvit_jax.train import config as config_lib
from tinyvit_jax.train import metrics

VIEWS = (1, 2, 5, 10)
EPOCHS, K = 12, 3


def arms(views=VIEWS) -> list[str]:
  return ['per_epoch'] + [f'views_{m}' for m in views]


def recipe(seeds, teacher_epochs: int, views=VIEWS) -> ml_collections.ConfigDict:
  qs = config_lib.load_recipe(fpd_vs_online.QUICKSTART)
  runs = dict(teacher=fpd_vs_online.recipe('quickstart', [], teacher_epochs).runs.teacher)
  for seed in seeds:
    for arm in arms(views):
      run = qs.student_config(runlocal=False)
      run.update(seed=seed, epochs=EPOCHS, eval_every_epochs=EPOCHS, stages=('train', 'eval'))
      run.optim.warmup_epochs = min(run.optim.warmup_epochs, EPOCHS // 4)
      run.distill.update(kind='fpd', from_store=True, k=K, teacher='{workdir}/teacher/export',
                         verify_rows=0)
      if arm == 'per_epoch':
        run.stages = ('save_logits', 'train', 'eval')
      else:
        run.distill.views_per_example = int(arm[len('views_'):])
      runs[f'{arm}_seed{seed}'] = run
  config = ml_collections.ConfigDict()
  config.runs = ml_collections.ConfigDict(runs)
  config.run_order = tuple(runs)
  return config


def run_all(config, workdir: str) -> dict:
  """Runs every run (a bounded one on its cut of its seed's per-epoch store); returns
  {run: top-1}."""
  runs = main_lib.check_recipe(config, workdir)
  top1 = {}
  for name, run in runs.items():
    run_dir = os.path.join(workdir, name)
    views = run.distill.views_per_example
    if views:
      saved = os.path.join(workdir, f'per_epoch_seed{run.seed}', 'logits')
      fpd_vs_online.cut_store(saved, store.location(run.distill, run_dir), K, views)
    top1[name] = main_lib.run_stages(run, run_dir, None)['top1']
  return top1


def table(top1: dict, seeds, workdir: str, views=VIEWS) -> list[dict]:
  rows = []
  for arm in arms(views):
    per_seed = [top1[f'{arm}_seed{seed}'] for seed in seeds]
    path = os.path.join(workdir, f'{arm}_seed{seeds[0]}', 'logits')
    rows.append(
        dict(arm=arm, stored_epochs=len(store.LogitStore.open(path).epochs_done),
             store_bytes=fpd.store_bytes(path), **{
                 f'seed{s}': round(v, 4) for s, v in zip(seeds, per_seed)
             }, mean=round(float(np.mean(per_seed)), 4),
             std=round(float(np.std(per_seed, ddof=1)), 4) if len(seeds) > 1 else None))
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='/tmp/fpd_vs_online')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--teacher_epochs', type=int, default=10)
  parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), 'out',
                                                    'bounded_store.json'))
  args = parser.parse_args(argv)
  flags.FLAGS.mark_as_parsed()
  compile_cache.enable()
  seeds = [int(s) for s in args.seeds.split(',')]
  top1 = run_all(recipe(seeds, args.teacher_epochs), args.workdir)
  result = dict(seeds=seeds, teacher_top1=top1['teacher'], student_epochs=EPOCHS, k=K,
                accuracy=table(top1, seeds, args.workdir))
  print(f'teacher (TinyViT-5M, 32 px): top-1 {result["teacher_top1"]:.4f}')
  print(metrics.summary_table(result['accuracy']), flush=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=1)
  return result


if __name__ == '__main__':
  main()
