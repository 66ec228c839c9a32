"""Top-k ablation: what a student learns from stores of k = 1, 3, 5 and all (10) classes.

  python benchmarks/topk_ablation.py --workdir /tmp/topk [--teacher_epochs 10]
      [--student_epochs 8]

On the embedded digits, the quickstart's recipe (configs/quickstart.py): its teacher
(TinyViT-5M at 32 px, trained on labels) first, then the same 0.5M-parameter student,
same seed and budget, trained from a store of each k (soft cross-entropy on the dense
rebuild, no labels) and once on labels alone. Prints each run's held-out top-1 and the
store's bytes per row (every file of the store, manifest included, over its rows).
The epochs are cut well below the quickstart's 30 so the whole ablation fits in 10
minutes on 2 shared cores: the figures show the trade-off's direction, not converged
accuracies. The workdir keeps finished runs, so a rerun goes on where it stopped.
"""
import argparse
import os

import ml_collections
from absl import flags

import fpd  # benchmarks/, the script's folder
from tinyvit_jax import main as main_lib
from tinyvit_jax.distill import store
from tinyvit_jax.train import config as config_lib
from tinyvit_jax.train import metrics

KS = (1, 3, 5, 10)
QUICKSTART = os.path.join(os.path.dirname(__file__), '..', 'configs', 'quickstart.py')


def recipe(teacher_epochs: int, student_epochs: int) -> ml_collections.ConfigDict:
  qs = config_lib.load_recipe(QUICKSTART).get_config()
  teacher = qs.runs.teacher
  teacher.epochs = teacher_epochs
  runs = dict(teacher=teacher)
  for k in KS:
    student = qs.runs.student_fpd.copy_and_resolve_references()
    student.distill.k = k
    student.distill.verify_rows = 0
    runs[f'student_k{k}'] = student
  runs['student_labels'] = qs.runs.student_labels
  for name, run in runs.items():
    if name != 'teacher':
      run.epochs = student_epochs
    run.optim.warmup_epochs = 1
    run.stages = ('save_logits', 'train', 'eval') if name != 'teacher' else ('train', 'eval',
                                                                             'export')
  config = ml_collections.ConfigDict()
  config.runs = ml_collections.ConfigDict(runs)
  config.run_order = tuple(runs)
  return config


def store_bytes_per_row(path: str) -> float:
  logits = store.LogitStore.open(path)
  return fpd.store_bytes(path) / (len(logits.epochs_done) * logits.rows_per_epoch)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--workdir', default='/tmp/topk_ablation')
  parser.add_argument('--teacher_epochs', type=int, default=10)
  parser.add_argument('--student_epochs', type=int, default=8)
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()
  rows = main_lib.run_recipe(recipe(args.teacher_epochs, args.student_epochs), args.workdir)
  table = []
  for row, name in zip(rows, ('teacher',) + tuple(f'student_k{k}' for k in KS) +
                       ('student_labels',)):
    store_dir = os.path.join(args.workdir, name, 'logits')
    table.append(
        dict(
            run=name, top1=row['top1'], bytes_per_row=(round(store_bytes_per_row(store_dir), 1)
                                                       if os.path.isdir(store_dir) else None)))
  print(metrics.summary_table(table), flush=True)


if __name__ == '__main__':
  main()
