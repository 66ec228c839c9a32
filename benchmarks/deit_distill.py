"""DeiT's distillation table (its Table 3) at toy scale: a convnet teacher, DeiT students.

  python benchmarks/deit_distill.py --workdir /tmp/deit_distill [--seeds 0,1,2]
      [--teacher_epochs 15] [--student_epochs 20] [--settings none,soft,hard_cls,hard_dist]

On the embedded digits at 32 px, with the quickstart's data and augmentation
(``configs/quickstart.digits_run``: RandAugment m6, erasing, no Mixup), one run trains:
- the teacher: resnet18 at half width (channels 32-256, 2.8M parameters) on labels;
- for each seed, four students of the same budget and settings, the teacher run online on
  each step's augmented images (alpha 0.5, tau 1):
  * ``none``: DeiT on labels alone;
  * ``soft``: the class token, (1 - alpha) CE(labels) + alpha tau^2 KL(teacher);
  * ``hard_cls``: the class token, CE(labels) / 2 + CE(teacher's argmax) / 2;
  * ``hard_dist``: the distilled DeiT: its class head on labels, its distillation head on
    the teacher's argmax, the two heads then evaluated alone and averaged (inference).
The students are DeiT reduced to patch 4 (64 patches), width 64, depth 4 and 2 heads
(0.2M parameters). Prints held-out top-1 (the 360-image test split) per seed and the
mean over seeds, and writes them to ``--out``. The workdir keeps finished runs, so a
rerun goes on where it stopped.
"""
import argparse
import json
import os

from absl import flags
import jax
import ml_collections
import numpy as np

from tinyvit_jax import compile_cache
from tinyvit_jax import main as main_lib
from tinyvit_jax import predict
from tinyvit_jax.data import loader
from tinyvit_jax.data import sources
from tinyvit_jax.train import config as config_lib
from tinyvit_jax.train import metrics

QUICKSTART = os.path.join(os.path.dirname(__file__), '..', 'configs', 'quickstart.py')
TEACHER = dict(name='resnet18', kwargs=dict(img_size=32, channels=(32, 64, 128, 256)))
STUDENT_KWARGS = dict(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=2)
# setting -> (model, distillation kind); the distilled model has the distillation token.
STUDENTS = {
    'none': ('deit_tiny_patch16_224', 'none'),
    'soft': ('deit_tiny_patch16_224', 'soft'),
    'hard_cls': ('deit_tiny_patch16_224', 'hard'),
    'hard_dist': ('deit_tiny_distilled_patch16_224', 'hard')
}


def recipe(seeds, teacher_epochs: int, student_epochs: int,
           settings=tuple(STUDENTS)) -> ml_collections.ConfigDict:
  digits_run = config_lib.load_recipe(QUICKSTART).digits_run
  teacher = digits_run(TEACHER['kwargs'], runlocal=False, epochs=teacher_epochs)
  teacher.model.name = TEACHER['name']
  runs = dict(teacher=teacher)
  for seed in seeds:
    for setting in settings:
      model, kind = STUDENTS[setting]
      run = digits_run(STUDENT_KWARGS, runlocal=False, epochs=student_epochs)
      run.model.name = model
      run.seed = seed
      # eval_teacher off: the table is top-1 alone, and a teacher pass over the eval split
      # per student would cost its test's one-epoch runs ~15 s for figures nobody reads.
      run.distill.update(kind=kind, alpha=0.5, tau=1.0, eval_teacher=False,
                         teacher='{workdir}/teacher/export' if kind != 'none' else '')
      runs[f'{setting}_seed{seed}'] = run
  for run in runs.values():
    run.stages = ('train', 'eval', 'export')
    run.optim.warmup_epochs = min(run.optim.warmup_epochs, run.epochs // 4)  # short test runs
  config = ml_collections.ConfigDict()
  config.runs = ml_collections.ConfigDict(runs)
  config.run_order = tuple(runs)
  return config


def head_accuracies(export_dir: str, teacher_dir: str, config) -> tuple[dict, dict]:
  """Held-out top-1 of a distilled DeiT's class head, distillation head and their mean;
  and the share of images on which each head's top-1 is the teacher's (the distillation
  head learns the teacher's argmax, the class head the labels: the two must differ)."""
  model, eval_augment, _ = predict.load(export_dir)
  teacher, teacher_augment, _ = predict.load(teacher_dir)

  @jax.jit
  def heads(images):
    tokens = model.forward_features(eval_augment.device(images))
    cls_logits, dist_logits = model.head(tokens[:, 0]), model.head_dist(tokens[:, 1])
    return (cls_logits, dist_logits, (cls_logits + dist_logits) / 2,
            teacher(teacher_augment.device(images)))

  correct, agree, count = np.zeros(3), np.zeros(3), 0
  for batch in loader.eval_batches(sources.from_config(config.data,
                                                       'eval'), transform=eval_augment.host,
                                   global_batch=config.eval_batch_size):
    predicted = np.argmax(np.stack(heads(batch['image'])), axis=-1)
    predicted, taught = predicted[:3], predicted[3]
    correct += ((predicted == batch['label']) & batch['mask']).sum(axis=1)
    agree += ((predicted == taught) & batch['mask']).sum(axis=1)
    count += batch['mask'].sum()
  names = ('cls', 'dist', 'avg')
  return dict(zip(names, (correct / count).tolist())), dict(zip(names, (agree / count).tolist()))


def table(rows: dict, seeds) -> list:
  """One row per setting (the distilled one per head): top-1 per seed and their mean."""
  lines = []
  for name, top1 in rows.items():
    per_seed = [top1[seed] for seed in seeds]
    lines.append(
        dict(student=name, **{
            f'seed{s}': round(v, 4) for s, v in zip(seeds, per_seed)
        }, mean=round(float(np.mean(per_seed)), 4)))
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='/tmp/deit_distill')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--teacher_epochs', type=int, default=15)
  parser.add_argument('--student_epochs', type=int, default=20)
  parser.add_argument('--settings', default=','.join(STUDENTS),
                      help='comma-separated students to train, of ' + ', '.join(STUDENTS))
  parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), 'out',
                                                    'deit_distill.json'))
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()
  compile_cache.enable()
  seeds = [int(s) for s in args.seeds.split(',')]
  settings = args.settings.split(',')
  unknown = sorted(set(settings) - set(STUDENTS))
  if unknown:
    parser.error(f'unknown --settings {unknown}; known: {list(STUDENTS)}')
  config = recipe(seeds, args.teacher_epochs, args.student_epochs, settings)
  summary = {row['run']: row for row in main_lib.run_recipe(config, args.workdir)}
  rows, agreement = {}, {}
  for setting in settings:
    for seed in seeds:
      name = f'{setting}_seed{seed}'
      if setting != 'hard_dist':
        rows.setdefault(setting, {})[seed] = summary[name]['top1']
        continue
      heads, agreement[seed] = head_accuracies(os.path.join(args.workdir, name, 'export'),
                                               os.path.join(args.workdir, 'teacher', 'export'),
                                               config.runs[name])
      # The trainer's own eval averages the heads too: the two must agree.
      assert abs(heads['avg'] - summary[name]['top1']) < 1e-6, (heads, summary[name])
      for head, top1 in heads.items():
        rows.setdefault(f'hard_dist ({head})', {})[seed] = top1
  result = dict(teacher_top1=summary['teacher']['top1'], seeds=seeds,
                teacher_epochs=args.teacher_epochs, student_epochs=args.student_epochs,
                rows=table(rows, seeds), hard_dist_teacher_agreement=agreement)
  print(f'teacher (resnet18, half width): top-1 {result["teacher_top1"]:.4f}')
  for seed, shares in agreement.items():
    print(f'hard_dist seed {seed}: top-1 agreement with the teacher, class head '
          f'{shares["cls"]:.4f}, distillation head {shares["dist"]:.4f}')
  print(metrics.summary_table(result['rows']), flush=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=1)


if __name__ == '__main__':
  main()
