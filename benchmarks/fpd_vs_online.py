"""FPD's two claims on the embedded digits, measured: it costs less than distilling online,
and it teaches what the online teacher teaches.

  python benchmarks/fpd_vs_online.py --setup quickstart    # claim 1: cost and agreement
  python benchmarks/fpd_vs_online.py --setup short         # claim 2: where distilling helps

One teacher (the quickstart's TinyViT-5M at 32 px, 10 epochs on labels, seed 0), then the
quickstart's 0.5M-parameter student trained per seed in every arm of the setup, all with
the same data, augmentation (the quickstart's: RandAugment m6, erasing, no Mixup),
epochs, optimiser and seed:
- ``labels``: cross-entropy on the labels (label smoothing 0.1);
- ``online``: no labels; the teacher's full softmax on the student's own augmented images
  at every step, soft-target cross-entropy (the loss FPD approximates);
- ``fpd_k{k}``: no labels; soft-target cross-entropy on the dense rebuild of the teacher's
  stored top-k (``distill/targets.py``). The largest k is saved by the save pass (timed);
  each smaller k's store is the saved rows cut to their first k (the save pass sorts the
  top-k descending, so these are the rows a save pass at that k writes), timed as ``cut``.

Setups:
- ``quickstart``: students of 8 epochs, k = 3 (the quickstart's k).
- ``short``: students of 3 epochs, k = 1, 3, 5 and 10 (10 is every class, so k = 10
  differs from ``online`` only by the store's float16). Fixed from label-only students
  alone (seed 0, teacher 0.9694), before any distilled student of it had run: the
  quickstart student at 8 epochs 0.9582 (1 point below its teacher), at 3 epochs 0.8217;
  a 4x narrower one (widths 8-32, 37K parameters) at 8 epochs 0.7855, at 5 epochs 0.6128.
  The 3-epoch student sits 15 points below its teacher and, with the narrow one at 5
  epochs, is the cheapest of those well below it; it keeps the student of claim 1.

Prints, and writes to ``benchmarks/out/fpd_vs_online_<setup>.json``: held-out top-1 (360
test digits) per arm and seed with mean and standard deviation, and store bytes per row
(every file of the store over its rows); the wall and CPU seconds of every part (teacher,
save pass, each student's training), each a median over seeds, with a student's steady
seconds per epoch (its steps after the first log point); and the cost of N = 1, 3 and 10
students, online (N x its student) against FPD (one save pass + N x its student), in
wall seconds and, as a ratio, in CPU seconds of the process. A
student's seconds are its train stage's: model set-up, compilation (XLA's persistent
cache makes every one after the first cheaper, hence the medians), the steps and one
evaluation at its last epoch. The workdir keeps finished runs and their times
(``times.json``), so a rerun goes on where it stopped; both setups share the teacher of
a shared ``--workdir`` (default ``/tmp/fpd_vs_online``).
"""
import argparse
import json
import os
import statistics
import time

import ml_collections
import numpy as np
from absl import flags

import topk_ablation  # benchmarks/, the script's folder
from tinyvit_jax import compile_cache
from tinyvit_jax import main as main_lib
from tinyvit_jax import writes
from tinyvit_jax.distill import manifest
from tinyvit_jax.distill import store
from tinyvit_jax.train import config as config_lib
from tinyvit_jax.train import metrics

QUICKSTART = os.path.join(os.path.dirname(__file__), '..', 'configs', 'quickstart.py')
# setup -> (student epochs, top-k's)
SETUPS = {'quickstart': (8, (3,)), 'short': (3, (1, 3, 5, 10))}
STUDENT_COUNTS = (1, 3, 10)


def arms(ks) -> list[str]:
  return ['labels', 'online'] + [f'fpd_k{k}' for k in ks]


def run_name(setup: str, arm: str, seed: int) -> str:
  return f'{setup}_{arm}_seed{seed}'


def recipe(setup: str, seeds, teacher_epochs: int, student_epochs: int | None = None,
           ks=None) -> ml_collections.ConfigDict:
  qs = config_lib.load_recipe(QUICKSTART)
  default_epochs, default_ks = SETUPS[setup]
  ks = sorted(ks or default_ks)
  teacher = qs.get_config().runs.teacher
  teacher.epochs = teacher_epochs
  teacher.stages = ('train', 'eval', 'export')
  runs = dict(teacher=teacher)
  for seed in seeds:
    for arm in arms(ks[::-1]):  # the save pass's run (largest k) before the cut stores'
      run = qs.student_config(runlocal=False)
      run.seed = seed
      run.epochs = student_epochs or default_epochs
      run.stages = ('train', 'eval')
      if arm == 'online':
        run.distill.update(kind='fpd', from_store=False, teacher='{workdir}/teacher/export')
      elif arm.startswith('fpd'):
        run.distill.update(kind='fpd', from_store=True, k=int(arm[len('fpd_k'):]),
                           teacher='{workdir}/teacher/export', verify_rows=0)
        if run.distill.k == ks[-1]:
          run.stages = ('save_logits', 'train', 'eval')
      runs[run_name(setup, arm, seed)] = run
  for run in runs.values():
    run.optim.warmup_epochs = min(run.optim.warmup_epochs, run.epochs // 4)  # short runs
    run.eval_every_epochs = run.epochs  # one evaluation in the loop, at the end
  config = ml_collections.ConfigDict()
  config.runs = ml_collections.ConfigDict(runs)
  config.run_order = tuple(runs)
  return config


def cut_store(source_path: str, path: str, k: int, views: int = 0) -> None:
  """Writes at ``path`` the store at ``source_path`` with each row cut to its first k; with
  ``views``, a bounded store of its first ``views`` epochs (``distill.views_per_example``)."""
  source = store.LogitStore.open(source_path)
  if os.path.exists(os.path.join(path, 'manifest.json')):
    target = store.LogitStore.open(path)
  else:
    meta = dict({field: source.manifest[field] for field in manifest.META_FIELDS}, k=k,
                views_per_example=views)
    target = store.LogitStore.create(path, meta, source.chunk_rows)
  for epoch in source.epochs_done[:views or None]:
    if epoch not in target.epochs_done:
      values, indices, example = source.read(epoch, 0, source.rows_per_epoch)
      with target.epoch_writer(epoch) as writer:
        writer.write(0, values[:, :k], indices[:, :k], example)
      target.mark_epoch_done(epoch)


class Timer:
  """Wall and CPU seconds of each (run, part), kept in ``workdir/times.json``."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, 'times.json')
    self.times = {}
    if os.path.exists(self.path):
      with open(self.path) as f:
        self.times = json.load(f)

  def run(self, name: str, part: str, work) -> None:
    """Runs ``work()`` unless this part of this run is timed already."""
    if part in self.times.get(name, {}):
      return
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    self.times.setdefault(name, {})[part] = dict(wall=time.perf_counter() - wall,
                                                 cpu=time.process_time() - cpu)
    writes.write_json(self.path, self.times)


def run_all(config, workdir: str) -> tuple[dict, dict, dict]:
  """Runs every run part by part, timing each; returns ({run: top-1}, times, {run: steady
  seconds per epoch})."""
  runs = main_lib.check_recipe(config, workdir)
  timer = Timer(workdir)
  top1, steady = {}, {}
  for name, run in runs.items():
    run_dir = os.path.join(workdir, name)
    if run.distill.from_store and 'save_logits' not in run.stages:
      saved = name.replace(f'_k{run.distill.k}_', f'_k{max_k(runs)}_')
      timer.run(
          name, 'cut', lambda: cut_store(os.path.join(workdir, saved, 'logits'),
                                         store.location(run.distill, run_dir), run.distill.k))
    for stage in run.stages:
      one = run.copy_and_resolve_references()
      one.stages = (stage,)
      timer.run(name, stage, lambda: main_lib.run_stages(one, run_dir, None))
    top1[name] = main_lib.run_stages(run, run_dir, None)['top1']  # every stage done: reads
    steady[name] = steady_epoch_seconds(run_dir, run.batch_size)
  return top1, timer.times, steady


def max_k(runs: dict) -> int:
  return max(run.distill.k for run in runs.values() if run.distill.from_store)


def accuracy_table(top1: dict, setup: str, seeds, ks, workdir: str) -> list[dict]:
  rows = []
  for arm in arms(ks):
    per_seed = [top1[run_name(setup, arm, seed)] for seed in seeds]
    row = dict(arm=arm, **{
        f'seed{s}': round(v, 4) for s, v in zip(seeds, per_seed)
    }, mean=round(float(np.mean(per_seed)), 4),
               std=round(float(np.std(per_seed, ddof=1)), 4) if len(seeds) > 1 else None)
    if arm.startswith('fpd'):
      row['bytes_per_row'] = round(
          topk_ablation.store_bytes_per_row(
              os.path.join(workdir, run_name(setup, arm, seeds[0]), 'logits')), 1)
    rows.append(row)
  return rows


def steady_epoch_seconds(run_dir: str, batch: int) -> float | None:
  """Seconds per epoch of a run's steps after its first log point (so without set-up and
  compilation), from the rates its metrics log: step s was done s * B / rate seconds after
  the loop started."""
  rows = [r for r in metrics.read_metrics(run_dir) if 'loss' in r]
  if len(rows) < 2:
    return None
  first, last = rows[0], rows[-1]
  done = [r['step'] * batch / r['images_per_second'] for r in (first, last)]
  steps_per_epoch = last['step'] / last['epoch']
  return (done[1] - done[0]) / (last['step'] - first['step']) * steps_per_epoch


def part_seconds(times: dict, steady: dict, setup: str, seeds, ks) -> dict:
  """Median over seeds of each part's wall and CPU seconds: 'teacher', 'save' (the save
  pass at the largest k), 'cut_k{k}', and each arm's training, with its steady seconds
  per epoch."""

  def median(names, part):
    return {
        kind: round(statistics.median(times[n][part][kind] for n in names), 2)
        for kind in ('wall', 'cpu')
    }

  def by_seed(arm):
    return [run_name(setup, arm, seed) for seed in seeds]

  parts = dict(teacher=median(['teacher'], 'train'), save=median(by_seed(f'fpd_k{max(ks)}'),
                                                                 'save_logits'))
  parts.update({f'cut_k{k}': median(by_seed(f'fpd_k{k}'), 'cut') for k in ks if k != max(ks)})
  for arm in arms(ks):
    epoch = [steady[n] for n in by_seed(arm) if steady[n] is not None]
    parts[arm] = dict(median(by_seed(arm), 'train'),
                      steady_epoch=round(statistics.median(epoch), 2) if epoch else None)
  return parts


def cost_table(parts: dict, ks, counts=STUDENT_COUNTS) -> list[dict]:
  """Seconds of N students: online N x T_online, FPD one save pass + N x T_fpd; wall
  seconds, and the ratio in CPU seconds too (which other work on the machine disturbs
  less)."""

  def cost(kind, n):
    online, save, fpd = (parts[p][kind] for p in ('online', 'save', f'fpd_k{max(ks)}'))
    return n * online, save + n * fpd

  rows = []
  for n in counts:
    (online, fpd), (online_cpu, fpd_cpu) = cost('wall', n), cost('cpu', n)
    rows.append(
        dict(students=n, labels_s=round(n * parts['labels']['wall'], 1), online_s=round(online, 1),
             fpd_s=round(fpd, 1), fpd_over_online=round(fpd / online, 3),
             cpu_fpd_over_online=round(fpd_cpu / online_cpu, 3)))
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--setup', choices=sorted(SETUPS), default='quickstart')
  parser.add_argument('--workdir', default='/tmp/fpd_vs_online')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--teacher_epochs', type=int, default=10)
  parser.add_argument('--student_epochs', type=int, default=0, help='0: the setup\'s')
  parser.add_argument('--ks', default='', help='e.g. 1,3; default: the setup\'s')
  parser.add_argument('--out', default='')
  args = parser.parse_args(argv)
  flags.FLAGS.mark_as_parsed()
  compile_cache.enable()
  workdir = args.workdir
  out = args.out or os.path.join(os.path.dirname(__file__), 'out',
                                 f'fpd_vs_online_{args.setup}.json')
  seeds = [int(s) for s in args.seeds.split(',')]
  ks = sorted(int(k) for k in args.ks.split(',')) if args.ks else SETUPS[args.setup][1]
  config = recipe(args.setup, seeds, args.teacher_epochs, args.student_epochs, ks)
  top1, times, steady = run_all(config, workdir)
  parts = part_seconds(times, steady, args.setup, seeds, ks)
  result = dict(setup=args.setup, seeds=seeds, teacher_top1=top1['teacher'],
                teacher_epochs=args.teacher_epochs,
                student_epochs=config.runs[run_name(args.setup, 'labels', seeds[0])].epochs,
                accuracy=accuracy_table(top1, args.setup, seeds, ks,
                                        workdir), seconds=parts, cost=cost_table(parts, ks))
  print(f'teacher (TinyViT-5M, 32 px): top-1 {result["teacher_top1"]:.4f}')
  print(metrics.summary_table(result['accuracy']))
  print(
      metrics.summary_table([
          dict(part=p, wall_s=s['wall'], cpu_s=s['cpu'], steady_s_per_epoch=s.get('steady_epoch'))
          for p, s in parts.items()
      ]))
  print(metrics.summary_table(result['cost']), flush=True)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, 'w') as f:
    json.dump(result, f, indent=1)
  return result


if __name__ == '__main__':
  main()
