"""The accelerator suite: every figure a GPU or TPU run needs, in one command of < 8 min.

  benchmarks/accelerator_wheels.sh   # here, once: the wheels the GPU machine lacks, in .whl/
  # there, from the repository root:
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  PYTHONPATH=/tmp/site:. python3 benchmarks/accelerator.py
  python benchmarks/accelerator.py --quick   # a miniature of every arm on CPU (a test runs it)

Arms, in order of importance; each runs in a child process of its own, so that its peak
device memory (f) is its own and a hang or an out-of-memory costs one arm, and its result
is added to ``--out``'s ``accelerator.json`` and ``accelerator.md`` as soon as it ends: a
run cut short keeps what it measured. An arm starts only while ``--deadline`` leaves it
time, and is stopped at its own time limit or the deadline, whichever comes first.

  step:<model>  (a) train step (AdamW, float32 params, ``--dtype`` compute) and forward,
                images/s: ours under jit against timm eager and under torch.compile, both
                under ``torch.autocast(bfloat16)``, in alternating rounds
                (``benchmarks/models.py``). TinyViT-5M first, then DeiT-S distilled, then
                TinyViT-21M; forward beside the TinyViT paper's V100 figures for scale.
  student       (c) the store-fed student step against the label step (TinyViT-5M, C =
                1,000, k = 10): the host hook's read and check, the rows' transfer, the
                dense rebuild (``benchmarks/fpd.py`` (c)).
  augment       (d) device augmentation (RandAugment m9, erasing 0.25, Mixup 0.8 / CutMix
                1.0) as a share of TinyViT-5M's train step: the trainer's own step
                (``train.step.make_train_step``) with the augmentation against the same step
                on images augmented beforehand, and the augmentation alone.
  save_pass     (b) the FPD save pass of TinyViT-21M over images held in memory, device
                augmentation included, against the same teacher's plain inference
                (``benchmarks/fpd.py`` (b), ``--augment_on device``).
  save_pass:vit_large_patch14_clip_224  the same with the paper's kind of teacher, CLIP
                ViT-L/14 at 224 in ``--dtype`` compute, its weights replicated (1.2 GB in
                float32; ``benchmarks/fpd.py`` (e)); ``--quick``: a 2-block ViT of width 32.
  loader        (e) the input pipeline on real JPEGs (375x500, decode, crop, flip;
                ``augment_on='device'``), one worker per host core, against the
                images/s of the student's step with augmentation from ``augment``; and
                with reduced-size JPEG decoding
                (``jpeg_draft``) as well (``benchmarks/data.py``).
  attention     the attention formulations (models/attention.py) inside DeiT-S
                distilled's forward and train step: the einsum form, XLA's
                ``dot_product_attention`` and cuDNN's fused kernel, which ``'auto'`` picks
                on a GPU (``benchmarks/attention.py``); einsum and XLA's on a TPU.

Compiles are shared through one persistent compilation cache for the whole run, which
also keeps XLA's GPU autotuning results, so a later arm's compile of the same model is
quicker. JAX allocates on demand (``XLA_PYTHON_CLIENT_PREALLOCATE=false``), so torch and
JAX share the device and each peak is what the arm needed. On a TPU the timm arms are
skipped (``--no-timm`` in models.py).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# images/s at batch 256 on one V100, the TinyViT paper's Table 5, for scale.
PAPER_V100 = {'tiny_vit_5m_224': 3060, 'tiny_vit_11m_224': 2468, 'tiny_vit_21m_224': 1571}
TARGETS = dict(train_over_compile=1.2, save_over_inference=0.95, store_overhead=0.03,
               augment_share=0.10, loader_over_step=1.0)
# name, seconds it may take on an accelerator, its compiles included.
ARMS = (('step:tiny_vit_5m_224', 240), ('student', 100), ('augment', 100), ('save_pass', 120),
        ('save_pass:vit_large_patch14_clip_224', 150), ('loader', 60), ('attention', 120),
        ('step:deit_small_distilled_patch16_224', 150), ('step:tiny_vit_21m_224', 200))
QUICK_STEP_MODEL = 'deit_tiny_distilled_patch16_224'


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='CPU miniature of every arm: tiny models, images and batches')
  parser.add_argument('--arms', default='',
                      help='comma-separated arms to run, in this order (default: all)')
  parser.add_argument('--deadline', type=float, default=450.0,
                      help='seconds for the whole suite; no arm starts or runs past it')
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--dtype', default='bfloat16', choices=('float32', 'bfloat16'))
  parser.add_argument('--compile-timeout', type=float, default=90.0,
                      help='seconds for each torch.compile first call')
  parser.add_argument('--workers', type=int, default=len(os.sched_getaffinity(0)),
                      help='loader processes (default: one per host core)')
  parser.add_argument('--out', default=os.path.join(HERE, 'out'))
  parser.add_argument('--arm', help=argparse.SUPPRESS)  # set in each child
  parser.add_argument('--result', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  args.arm_budgets = dict(ARMS)
  if args.quick:
    args.batch, args.rounds, args.dtype, args.workers = 4, 2, 'float32', 1
    args.deadline = max(args.deadline, 1800.0)
    args.arm_budgets = {name: 600 for name, _ in ARMS}
  names = args.arms.split(',') if args.arms else [name for name, _ in ARMS]
  if args.quick and not args.arms:  # one step arm: on CPU each runs the same tiny DeiT
    names = [n for n in names if not n.startswith('step:') or n == ARMS[0][0]]
  unknown = [name for name in names if name not in args.arm_budgets]
  if unknown:
    parser.error(f'unknown arm(s) {unknown}; known: {[name for name, _ in ARMS]}')
  args.arm_names = names
  return args


# --- the arms, each run in a child process ---------------------------------------------


def step_arm(args, model: str) -> dict:
  """(a)"""
  import models  # pylint: disable=import-outside-toplevel
  flags = [
      '--models', QUICK_STEP_MODEL if args.quick else model, '--batch',
      str(args.batch), '--rounds',
      str(args.rounds), '--dtype', args.dtype, '--compile-timeout',
      str(args.compile_timeout)
  ]
  margs = models.parse_args(flags + (['--quick'] if args.quick else []))
  import jax  # pylint: disable=import-outside-toplevel
  if jax.default_backend() == 'tpu':
    margs.no_timm = True
  # torch.compile's cold compiles can take minutes: ours and timm eager are measured and
  # kept first, then all three again side by side.
  compiled, margs.no_compile = not margs.no_compile, True
  rows = models.benchmark_model(margs.models[0], margs)
  print(models.format_table(rows))
  if compiled:
    write_result(args, dict(rows=rows, environment=models.environment(margs)))
    margs.no_compile = False
    rows = models.benchmark_model(margs.models[0], margs)
    print(models.format_table(rows))
  return dict(rows=rows, environment=models.environment(margs))


def _fpd_args(args, parts: str):
  import fpd  # pylint: disable=import-outside-toplevel
  if args.quick:
    return fpd, fpd.parse_args([
        '--quick', '--parts', parts, '--augment_on', 'device', '--student', 'deit_tiny_patch16_224',
        '--teacher', 'deit_tiny_patch16_224'
    ])
  return fpd, fpd.parse_args([
      '--parts', parts, '--rounds',
      str(args.rounds), '--batch',
      str(args.batch), '--dtype', args.dtype, '--augment_on', 'device', '--workers',
      str(args.workers), '--teacher', 'tiny_vit_21m_224', '--save_size', '224', '--save_images',
      str(args.batch * 24), '--student_size', '224', '--student_steps', '12', '--vit_size', '224',
      '--vit_images',
      str(args.batch * 24), '--vit_batch',
      str(args.batch)
  ])


def student_arm(args) -> dict:
  """(c)"""
  fpd, fargs = _fpd_args(args, 'c')
  with tempfile.TemporaryDirectory() as work:
    return fpd.student_step(fargs, work)


def save_pass_arm(args, teacher: str = '') -> dict:
  """(b); with a ``teacher`` named, fpd.py's (e) with that ViT (under --quick, fpd's tiny
  one)."""
  fpd, fargs = _fpd_args(args, 'e' if teacher else 'b')
  with tempfile.TemporaryDirectory() as work:
    if not teacher:
      return fpd.save_pass_speed(fargs, work)
    if not args.quick:
      fargs.vit_teacher = teacher
    return fpd.vit_save_pass(fargs, work)


def augment_arm(args) -> dict:
  """(d)"""
  import jax  # pylint: disable=import-outside-toplevel
  import optax
  from flax import nnx
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  import fpd  # pylint: disable=import-outside-toplevel
  import models  # pylint: disable=import-outside-toplevel
  from tinyvit_jax.data import augment
  from tinyvit_jax.data import loader
  from tinyvit_jax.data import pipeline
  from tinyvit_jax.data.sources import synthetic
  from tinyvit_jax.distill import losses
  from tinyvit_jax.models import create_model
  from tinyvit_jax.train import step as step_lib

  name, size = ('deit_tiny_patch16_224', 32) if args.quick else ('tiny_vit_5m_224', 224)
  classes, batch = 1000, args.batch
  mesh = pipeline.data_mesh()
  train_augment = augment.make_train_augment(dict(image_size=size))  # the recipes' defaults
  device_augment = pipeline.make_device_augment(train_augment, mesh, batch, classes, 0.1)
  source = synthetic.SyntheticSource(batch, num_classes=classes, image_size=size * 8 // 7)
  host = next(loader.train_batches(source, seed=0, global_batch=batch,
                                   transform=train_augment.host))
  sharding = NamedSharding(mesh, P('data'))
  raw = {k: jax.device_put(host[k], sharding) for k in ('image', 'key', 'label')}
  images, targets = device_augment(raw)
  ready = dict(image=images, targets=targets)  # augmented once, before the timing
  tx = optax.adamw(1e-3, weight_decay=0.05)

  def loss_fn(outputs, targets):
    return losses.soft_target_cross_entropy(outputs, targets)

  def make(inputs):
    model = create_model(name, num_classes=classes, img_size=size, rngs=nnx.Rngs(0),
                         **fpd.dtype_kwargs(args))
    state = step_lib.TrainState.create(model, tx, mesh)
    step = step_lib.make_train_step(state, tx, mesh, inputs=inputs, loss_fn=loss_fn)
    return state, step

  arms = dict(augmented=(make(lambda batch, _: device_augment(batch)), raw),
              plain=(make(lambda batch, _: (batch['image'], batch['targets'])), ready))

  def step_call(arm):
    (state, step), batch = arms[arm]

    def call():
      state.leaves, out = step(state.leaves, batch, None)
      jax.block_until_ready(out['loss'])

    return call

  calls = {arm: step_call(arm) for arm in arms}
  calls['augment_alone'] = lambda: jax.block_until_ready(device_augment(raw))
  first = {arm: models.first_call_seconds(call) for arm, call in calls.items()}
  rates = {arm: [] for arm in calls}
  min_seconds = 0.2 if args.quick else 1.0
  for _ in range(args.rounds):
    for arm, call in calls.items():
      rates[arm].append(models.images_per_second(call, batch, min_seconds))
  report = {
      arm: dict(img_per_s=models.summary(runs), first_call_s=first[arm])
      for arm, runs in rates.items()
  }
  median = {arm: report[arm]['img_per_s']['median'] for arm in rates}
  report['share_of_step'] = 1 - median['augmented'] / median['plain']
  report['alone_over_step'] = median['augmented'] / median['augment_alone']
  report['config'] = dict(model=name, image_size=size, batch=batch, num_classes=classes,
                          dtype=args.dtype, aug=dict(augment.TRAIN_DEFAULTS, image_size=size))
  print(f'(d) {name} step with device augmentation {median["augmented"]:.1f} img/s, on '
        f'images augmented beforehand {median["plain"]:.1f} img/s -> share '
        f'{report["share_of_step"] * 100:.1f}%; the augmentation alone '
        f'{median["augment_alone"]:.1f} img/s ({report["alone_over_step"] * 100:.1f}% of a step)')
  return report


def loader_arm(args) -> dict:
  """(e)"""
  import data  # pylint: disable=import-outside-toplevel
  report = {}
  with tempfile.TemporaryDirectory() as work:
    flags = ['--cache', work, '--workers', str(args.workers), '--batch', str(args.batch)]
    if args.quick:
      flags += ['--quick', '--height', '48', '--width', '64', '--size', '32']
    else:
      flags += ['--images', '512', '--steps', '24', '--skip', str(2 * args.workers + 2)]
    dargs = data.parse_args(flags + ['--rounds', str(args.rounds)])
    folder = data.make_jpegs(work, dargs.images, dargs.height, dargs.width)
    for draft in (False, True):
      dargs.draft = draft
      runs = [
          data.time_round(data.ours_batches(dargs, folder, augment_on='device'), dargs)
          for _ in range(dargs.rounds)
      ]
      report['draft' if draft else 'full_decode'] = {
          metric: data.summary([run[metric] for run in runs])
          for metric in ('img_per_s', 'img_per_cpu_s')
      }
      print(
          f'(e) loader, {"draft" if draft else "full"} JPEG decode, {args.workers} '
          f'workers: {report["draft" if draft else "full_decode"]["img_per_s"]["median"]:.1f}'
          ' img/s', flush=True)
  report['config'] = dict(images=dargs.images, height=dargs.height, width=dargs.width,
                          size=dargs.size, batch=dargs.batch, workers=args.workers,
                          augment_on='device')
  return report


def attention_arm(args) -> dict:
  """The attention formulations, on the backend's choices."""
  import attention  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  impls = 'einsum,xla,cudnn' if jax.default_backend() == 'gpu' else 'einsum,xla'
  flags = ['--impls', impls, '--rounds', str(args.rounds), '--dtype', args.dtype]
  if args.quick:
    flags += ['--quick', '--models', QUICK_STEP_MODEL]
  else:
    flags += ['--models', 'deit_small_distilled_patch16_224', '--batch', str(args.batch)]
  aargs = attention.parse_args(flags)
  rows = attention.benchmark_model(aargs.models[0], aargs)
  print(attention.format_table(rows, aargs.impls))
  return dict(rows=rows, impls=aargs.impls)


def peak_memory() -> dict:
  """Peak bytes this process held on its first device: JAX's, and torch's if it ran."""
  import jax  # pylint: disable=import-outside-toplevel
  stats = jax.local_devices()[0].memory_stats() or {}
  peaks = dict(jax_peak_bytes=stats.get('peak_bytes_in_use'), torch_peak_bytes=None)
  torch = sys.modules.get('torch')
  if torch is not None and torch.cuda.is_available():
    peaks['torch_peak_bytes'] = torch.cuda.max_memory_allocated()
  return peaks


def run_arm(args) -> None:
  """In a child: runs ``args.arm`` and writes its result and peak memory as JSON."""
  sys.path.insert(0, HERE)
  from tinyvit_jax import compile_cache  # pylint: disable=import-outside-toplevel
  compile_cache.enable()
  name, _, model = args.arm.partition(':')
  measure = dict(student=student_arm, augment=augment_arm, loader=loader_arm,
                 attention=attention_arm)
  if name in ('step', 'save_pass'):
    result = (step_arm if name == 'step' else save_pass_arm)(args, model)
  else:
    result = measure[name](args)
  write_result(args, result)


def write_result(args, result: dict) -> None:
  """The arm's result so far, with the peak memory so far, for the parent to read."""
  import jax  # pylint: disable=import-outside-toplevel
  from tinyvit_jax import writes  # pylint: disable=import-outside-toplevel
  writes.write_json(
      args.result,
      dict(result=result, memory=peak_memory(), backend=jax.default_backend(),
           device=str(jax.local_devices()[0].device_kind)), move='TMPDIR')


# --- the parent: runs the arms, writes the report after each ---------------------------


def child_env(cache_dir: str) -> dict:
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  env.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  env.setdefault('TINYVIT_JAX_COMPILATION_CACHE', cache_dir)
  env['PYTHONPATH'] = os.pathsep.join(
      p for p in (os.path.dirname(HERE), env.get('PYTHONPATH')) if p)
  return env


def run_suite(args) -> dict:
  os.makedirs(args.out, exist_ok=True)
  started = time.monotonic()
  report = dict(
      config=dict(quick=args.quick, batch=args.batch, rounds=args.rounds, dtype=args.dtype,
                  workers=args.workers, deadline_s=args.deadline, arms=args.arm_names),
      targets=TARGETS, arms={})
  forwarded = _forwarded(args)
  with tempfile.TemporaryDirectory(prefix='accelerator_') as work:
    env = child_env(os.path.join(work, 'xla_cache'))
    for name in args.arm_names:
      left = args.deadline - (time.monotonic() - started)
      limit = min(args.arm_budgets[name], left)
      entry = report['arms'][name] = dict(limit_s=round(limit, 1))
      if limit < 30:
        entry['status'] = f'not run: {left:.0f} s left of the {args.deadline:.0f} s deadline'
        write_report(report, args.out)
        continue
      result_path = os.path.join(work, name.replace(':', '_') + '.json')
      print(f'=== {name} (at most {limit:.0f} s)', flush=True)
      start = time.monotonic()
      # A session of its own, so that a stop also stops the loader workers it started.
      child = subprocess.Popen(
          [sys.executable, __file__, *forwarded, '--arm', name, '--result', result_path], env=env,
          start_new_session=True)
      try:
        code = child.wait(timeout=limit)
        entry['status'] = 'ok' if code == 0 else f'failed: exit {code}'
      except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        entry['status'] = f'stopped at its limit of {limit:.0f} s'
      entry['seconds'] = round(time.monotonic() - start, 1)
      if os.path.exists(result_path):  # all of it, or what it measured before it stopped
        with open(result_path) as f:
          entry.update(json.load(f))
      write_report(report, args.out)
  report['seconds'] = round(time.monotonic() - started, 1)
  write_report(report, args.out)
  return report


def _forwarded(args) -> list:
  """The parent's settings, for each child."""
  flags = [
      '--batch',
      str(args.batch), '--rounds',
      str(args.rounds), '--dtype', args.dtype, '--compile-timeout',
      str(args.compile_timeout), '--workers',
      str(args.workers)
  ]
  return (['--quick'] if args.quick else []) + flags


def write_report(report: dict, out: str) -> None:
  with open(os.path.join(out, 'accelerator.json'), 'w') as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(out, 'accelerator.md'), 'w') as f:
    f.write(format_report(report) + '\n')


def _rate(summary: dict) -> str:
  return f'{summary["median"]:,.0f} ({summary["min"]:,.0f}-{summary["max"]:,.0f})'


def _gib(value) -> str:
  return 'n/a' if value is None else f'{value / 2**30:.1f}'


def format_report(report: dict) -> str:
  """A markdown table of every arm that finished, and the status of every other."""
  lines = [
      '| arm | ours | against | ratio | target | peak GiB (JAX / torch) |',
      '|---|---|---|---|---|---|'
  ]
  arms = report['arms']
  step_rate = None  # the augment arm's student step, which the loader must keep up with
  for name, entry in arms.items():
    if 'result' not in entry:
      lines.append(f'| {name} | {entry.get("status", "running")} | | | | |')
      continue
    if entry['status'] != 'ok':
      lines.append(f'| {name}, {entry["status"]}: what it had measured | | | | | |')
    result, memory = entry['result'], entry['memory']
    peak = f'{_gib(memory["jax_peak_bytes"])} / {_gib(memory["torch_peak_bytes"])}'
    if name.startswith('step:'):
      for row in result['rows']:
        label = f'{row["model"]} {row["mode"]}'
        timm = [(impl, row[impl])
                for impl in ('timm_eager', 'timm_compile')
                if 'img_per_s' in row.get(impl, {})]
        against = ', '.join(f'{impl.split("_")[1]} {_rate(cell["img_per_s"])}'
                            for impl, cell in timm) or 'timm skipped'
        ratio = ', '.join(f'{row[key]:.2f}x {key.split("_")[-1]}' for key in ('ours_over_eager',
                                                                              'ours_over_compile')
                          if row.get(key) is not None)
        if row['mode'] == 'forward' and row['model'] in PAPER_V100:
          against += f'; paper V100 {PAPER_V100[row["model"]]:,}'
        target = (f'>= {TARGETS["train_over_compile"]}x compile' if row['mode'] == 'train' else '')
        lines.append(f'| {label} img/s | {_rate(row["ours"]["img_per_s"])} | {against} | '
                     f'{ratio} | {target} | {peak} |')
    elif name == 'student':
      labels, stored = result['labels_step_s']['median'], result['store_step_s']['median']
      lines.append(f'| store-fed step, ms | {stored * 1e3:.1f} | labels {labels * 1e3:.1f} | '
                   f'{result["overhead"] * 100:+.1f}% | <= +{TARGETS["store_overhead"]:.0%} '
                   f'| {peak} |')
    elif name == 'augment':
      step_rate = result['augmented']['img_per_s']['median']
      lines.append(f'| step with device augmentation img/s | '
                   f'{_rate(result["augmented"]["img_per_s"])} | pre-augmented '
                   f'{_rate(result["plain"]["img_per_s"])} | share '
                   f'{result["share_of_step"]:.1%} | <= {TARGETS["augment_share"]:.0%} '
                   f'| {peak} |')
    elif name.startswith('save_pass'):
      teacher = f', {result["config"]["teacher"]}' if ':' in name else ''
      lines.append(f'| save pass{teacher} img/s | {_rate(result["save"])} | inference '
                   f'{_rate(result["inference"])} | {result["save_over_inference"]:.2f}x | '
                   f'>= {TARGETS["save_over_inference"]}x | {peak} |')
    elif name == 'attention':
      impls = result['impls']
      for row in result['rows']:
        lines.append(f'| {row["model"]} {row["mode"]}, attention {impls[0]} img/s | '
                     f'{_rate(row[impls[0]])} | '
                     + ', '.join(f'{i} {_rate(row[i])}' for i in impls[1:]) + ' | '
                     + ', '.join(f'{row[f"{i}_over_{impls[0]}"]:.2f}x {i}' for i in impls[1:])
                     + f' | the fastest for \'auto\' | {peak} |')
    elif name == 'loader':
      for decode in ('full_decode', 'draft'):
        rate = result[decode]['img_per_s']
        ratio = (f'{rate["median"] / step_rate:.2f}x' if step_rate else 'needs the augment arm')
        lines.append(f'| loader ({decode.replace("_", " ")}, {result["config"]["workers"]} '
                     f'workers) img/s | {_rate(rate)} | student step '
                     f'{step_rate or 0:,.0f} | {ratio} | >= '
                     f'{TARGETS["loader_over_step"]}x | {peak} |')
  device = next((e['device'] for e in arms.values() if 'device' in e), 'not known yet')
  config = report['config']
  head = (f'Device: {device}; batch {config["batch"]}, {config["dtype"]} compute, '
          f'{config["rounds"]} rounds, medians (min-max).')
  return head + '\n\n' + '\n'.join(lines)


def main(argv=None):
  args = parse_args(argv)
  if args.arm:
    run_arm(args)
    return
  report = run_suite(args)
  print('\n' + format_report(report))
  print(f'\nWrote {os.path.join(args.out, "accelerator.json")} and accelerator.md '
        f'({report["seconds"]:.0f} s)')


if __name__ == '__main__':
  main()
