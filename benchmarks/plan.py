"""The paper recipes planned for Cloud TPU slices from this CPU machine: the README's table.

  python benchmarks/plan.py                      # every row, in order, each written as done
  python benchmarks/plan.py --only fpd5m         # rows whose name contains this
  python benchmarks/plan.py --list

Each row is ``python -m tinyvit_jax.main --config=RECIPE --workdir=W --plan=SLICE
--mode=STAGE [--config.distill.teacher=DIR]`` run in this process (``tinyvit_jax.plan``);
a teacher checkpoint is a model.json alone (``TEACHERS``: the architecture is all a plan
reads). The figures are compiled HBM and MODELLED speed (roofline of XLA's flops and bytes
on each chip's public peak and bandwidth); the compile seconds are this machine's, under
whatever else ran on it. Rows go to ``--out`` as each finishes, so a cut-off run keeps
what it did; a row already there is skipped.
"""
import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # plans need no device: keep libtpu quiet

from tinyvit_jax import chips  # pylint: disable=wrong-import-position
from tinyvit_jax import main  # pylint: disable=wrong-import-position
from tinyvit_jax import plan  # pylint: disable=wrong-import-position
from tinyvit_jax import writes  # pylint: disable=wrong-import-position
from tinyvit_jax.train import config as config_lib  # pylint: disable=wrong-import-position

# The teachers the recipes name by path: the papers' (model.json contents).
TEACHERS = {
    'clip': dict(model='clip_vit_large14_224', kwargs=dict(num_classes=21841)),
    'regnety': dict(model='regnety_160', kwargs=dict(num_classes=1000)),
}
MAIN_SLICES = ('v5litepod-8', 'v4-8', 'v5p-8', 'v6e-8', 'v5litepod-16')


def _rows():
  """(name, recipe, argument, slice, stage, teacher), most wanted first."""
  rows = []
  for slice_ in MAIN_SLICES:
    rows.append((f'fpd5m-train-{slice_}', 'fpd_21k', 'variant=5m', slice_, 'train', 'clip'))
    rows.append((f'fpd-save-{slice_}', 'fpd_21k', 'variant=5m', slice_, 'save_logits', 'clip'))
  for variant in ('21m', '11m'):
    rows.append((f'fpd{variant}-train-v5litepod-8', 'fpd_21k', f'variant={variant}', 'v5litepod-8',
                 'train', 'clip'))
  rows += [
      ('in1k21m-train-v5litepod-8', 'in1k', 'variant=21m', 'v5litepod-8', 'train', ''),
      ('ft384-train-v5litepod-8', 'finetune_1k', 'variant=21m,res=384', 'v5litepod-8', 'train', ''),
      ('ft512-train-v5litepod-8', 'finetune_1k', 'variant=21m,res=512', 'v5litepod-8', 'train', ''),
      ('deitb-hard-train-v5litepod-8', 'deit', 'size=base,distill=hard', 'v5litepod-8', 'train',
       'regnety'),
  ]
  return rows


def _teacher_dir(name: str, root: str) -> str:
  directory = os.path.join(root, name)
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'model.json'), 'w') as f:
    json.dump(dict(format=1, metadata={}, **TEACHERS[name]), f)
  return directory


def plan_row(recipe, arg, slice_, stage, teacher, root) -> dict:
  config = config_lib.load_recipe(f'configs/{recipe}.py').get_config(arg)
  flags = []
  if teacher:
    config.distill.teacher = _teacher_dir(teacher, root)
    flags.append(f'--config.distill.teacher={teacher.upper()}_DIR')
  workdir = os.path.join(root, 'workdir')
  runs = main.check_recipe(config, workdir, main.PLAN_DATA_DIR)
  started = time.time()
  rows = plan.plan_recipe(runs, workdir, slice_, mode=stage)
  command = (f'python -m tinyvit_jax.main --config=configs/{recipe}.py:{arg} --workdir=W '
             f'--plan={slice_} --mode={stage} {" ".join(flags)}').strip()
  return dict(rows[0], recipe=f'{recipe}:{arg}', command=command,
              wall_seconds=time.time() - started)


def markdown(paths) -> str:
  """The rows of ``paths`` as a Markdown table, in ``_rows``' order. img/s and days are
  the roofline's, and in brackets the compute bound's alone (XLA's flops at the chip's
  peak)."""
  rows = {}
  for path in paths:
    with open(path) as f:
      rows.update({row['name']: row for row in json.load(f)['rows']})
  lines = [
      '| recipe | stage | slice | B/chip | fits | HBM GiB/chip (of) | GFLOP/img XLA '
      '(MACs) | modelled img/s (compute bound) | modelled MFU | modelled days '
      '(compute bound) | host cores | compile s |', '|' + '---|' * 12
  ]
  for name, *_ in _rows():
    if name not in rows:
      continue
    r = rows[name]
    fmt = lambda key, spec: format(r[key], spec) if r.get(key) is not None else '-'
    speed = days = '-'
    status = r.get('status')
    if r.get('largest_batch_per_chip'):  # --plan_fit_batch's find
      status = f'{status} ({r["largest_batch_per_chip"]} fits)'
    if r.get('step_seconds'):
      batch = r['images_per_second'] * r['step_seconds']  # over the slice
      compute = (r['xla_gflop_per_image'] * 1e9 * r['batch_per_chip']
                 / chips.parse(r['accelerator']).peak_flops)
      speed = f'{r["images_per_second"]:,.0f} ({batch / compute:,.0f})'
      if r.get('schedule_hours') is not None:
        days = r['schedule_hours'] / 24
        days = f'{days:.1f} ({days * compute / r["step_seconds"]:.2f})'
    lines.append(
        f'| {r.get("recipe", name)} | {r.get("stage", "-")} | {r.get("accelerator", "-")} | '
        f'{r.get("batch_per_chip", "-")} | {status} | '
        f'{fmt("total_gib", ".1f")} ({fmt("capacity_gib", "g")}) | '
        f'{fmt("xla_gflop_per_image", ".2f")} ({fmt("model_gflop_per_image", ".2f")}) | '
        f'{speed} | {fmt("mfu", ".3f")} | {days} | '
        f'{fmt("host_cores_needed", ".1f")} | {fmt("compile_seconds", ".0f")} |')
  return '\n'.join(lines)


def main_(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='benchmarks/out/plan_tpu.json')
  parser.add_argument('--only', default='')
  parser.add_argument('--list', action='store_true')
  parser.add_argument('--markdown', nargs='*', metavar='JSON',
                      help='print these files\' rows as the README\'s table, and stop')
  args = parser.parse_args(argv)
  if args.markdown is not None:
    print(markdown(args.markdown or [args.out]))
    return
  wanted = [row for row in _rows() if args.only in row[0]]
  if args.list:
    print('\n'.join(row[0] for row in wanted))
    return
  done = {}
  if os.path.exists(args.out):
    with open(args.out) as f:
      done = {row['name']: row for row in json.load(f)['rows']}
  with tempfile.TemporaryDirectory() as root:
    for name, *spec in wanted:
      if name in done:
        continue
      try:
        row = plan_row(*spec, root)
      except Exception as error:  # a row that cannot be planned is a result too
        row = dict(status='error', error=str(error).splitlines()[0][:300])
      done[name] = dict(row, name=name)
      print(json.dumps(done[name]), flush=True)
      writes.write_json(
          args.out,
          dict(
              machine='Intel Xeon (AVX-512), 2 cores, shared',
              modelled=('step time = max(XLA flops / chip bf16 peak, XLA bytes accessed / chip HBM '
                        'bandwidth); img/s, MFU, hours and chip-hours follow from it'),
              rows=list(done.values())), move='--out')


if __name__ == '__main__':
  main_(sys.argv[1:])
