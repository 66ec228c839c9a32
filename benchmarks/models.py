"""Our models vs timm, eager and torch.compile: forward and AdamW train-step images/s.

  python benchmarks/models.py --models tiny_vit_5m_224,deit_tiny_distilled_patch16_224
  python benchmarks/models.py --quick   # smoke test: batch 4, 64x64, 2 rounds, no compile

For each model the three implementations (ours under jax.jit, timm eager, timm +
torch.compile) run in alternating rounds, so that noise from a shared machine hits all
of them alike; the table gives medians over rounds with (min-max), and ratios of medians.

* Ours: the NNX state is split once outside jit; a pure ``train_step(leaves, images,
  labels)`` over the flat list of (params, rest, opt_state) arrays is jitted with the
  state donated (optax.adamw 1e-3, wd 0.05,
  softmax cross-entropy; a distilled DeiT averages both heads' CE). Forward is a jitted
  pure eval-mode function.
* timm: channels_last, torch.optim.AdamW with the same settings, ``torch.no_grad()`` and
  eval mode for forward. torch.compile wraps the model (forward and its backward); its
  first call per mode must finish within ``--compile-timeout`` seconds, else "n/a".
* Threads: torch.set_num_threads(N). XLA sizes its CPU thread pool from the CPUs the
  process may run on (``intra_op_parallelism_threads`` is not an XLA flag, and
  ``--xla_cpu_multi_thread_eigen`` is on by default), so for N below that count the
  process is pinned to N CPUs before JAX starts its backend, which pins torch too.
* Per-step overhead: on the first model at batch 1 and 32x32, a jitted step that takes
  and returns the same donated state as the train step but computes nothing, i.e. the
  host cost of one step (pytree flattening, dispatch): once with the state as nnx/optax
  pytrees, once as the flat list of arrays our train step takes; and the real train
  step's time at that size for scale.
"""
import argparse
import json
import os
import platform
import signal
import statistics
import time

# Before torch loads OpenMP: threads that spin at barriers against another process's
# threads on a shared machine slowed timm 20-60x here; waiting passively avoids that.
# Set OMP_WAIT_POLICY=ACTIVE yourself on a dedicated machine.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
try:  # a TPU host may have neither; ours then runs alone (--no-timm)
  import timm
  import torch
  import torch.nn.functional as F
except ImportError:
  timm = torch = F = None

from tinyvit_jax.models import conv_ops
from tinyvit_jax.models import create_model, model_info

IMPLS = ('ours', 'timm_eager', 'timm_compile')
MODES = ('forward', 'train')
OVERHEAD_IMG_SIZE = 32
OVERHEAD_CALLS = 200


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', default='tiny_vit_5m_224,deit_tiny_distilled_patch16_224',
                      help='comma-separated registry names')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--img-size', type=int, default=None,
                      help="input resolution (default: each model's own, e.g. 224)")
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--warmup', type=int, default=2, help='untimed calls after the first')
  parser.add_argument('--min-seconds', type=float, default=1.0,
                      help='each timing repeats the call until this much time has passed')
  parser.add_argument('--compile-timeout', type=float, default=300.0,
                      help='seconds allowed for the first (compiling) call of each mode')
  parser.add_argument('--no-compile', action='store_true', help='skip timm + torch.compile')
  parser.add_argument('--no-timm', action='store_true',
                      help='ours only (a TPU, where torch has no device to run on)')
  parser.add_argument(
      '--modes', default=','.join(MODES),
      help='comma-separated, of forward,train; without train, no step overhead '
      '(a ViT-B train step takes minutes of a 2-core run)')
  parser.add_argument('--conv-impl', default='auto', choices=('auto', 'xla', 'shifts'))
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                      help='compute dtype: ours via dtype=, timm via torch.autocast')
  parser.add_argument('--json', default='benchmarks/out/models.json')
  parser.add_argument('--quick', action='store_true',
                      help='smoke test: batch 4, 64x64, 2 rounds, 1 warm-up, no compile')
  args = parser.parse_args(argv)
  if args.quick:
    args.batch, args.img_size, args.rounds, args.warmup = 4, 64, 2, 1
    args.min_seconds, args.no_compile = 0.2, True
  args.models = args.models.split(',')
  args.modes = args.modes.split(',')
  if not args.modes or not set(args.modes) <= set(MODES):
    parser.error(f'--modes {",".join(args.modes)}: expected some of {",".join(MODES)}')
  args.no_timm = args.no_timm or torch is None
  return args


def limit_threads(threads: int):
  """Pins the process to ``threads`` CPUs if it may use more; must precede JAX's first use."""
  cpus = sorted(os.sched_getaffinity(0))
  if threads > len(cpus):
    raise ValueError(f'--threads {threads}, but this process may use only {len(cpus)} CPUs.')
  if threads < len(cpus):
    os.sched_setaffinity(0, cpus[:threads])
  if torch is not None:
    torch.set_num_threads(threads)


def environment(args) -> dict:
  """Where the figures came from. ``isa`` is the widest vector set the CPU has: XLA:CPU's
  and oneDNN's kernels differ by it, and so do the ratios (README, "Benchmarks")."""
  with open('/proc/cpuinfo') as f:
    info = {
        key.strip(): value.strip()
        for key, value in (line.split(':', 1) for line in f if ':' in line)
    }
  cpu = info.get('model name', platform.processor())
  flags = info.get('flags', '').split()
  return dict(device=str(jax.devices()[0]), cpu=cpu, isa=next(
      (name for name in ('avx512f', 'avx2', 'avx') if name in flags), 'none'),
              cpus_pinned=sorted(os.sched_getaffinity(0)), jax_threads=len(os.sched_getaffinity(0)),
              torch_threads=torch.get_num_threads() if torch else None,
              load_average=os.getloadavg(), python=platform.python_version(), jax=jax.__version__,
              flax=__import__('flax').__version__, optax=optax.__version__,
              torch=getattr(torch, '__version__',
                            None), timm=getattr(timm, '__version__',
                                                None), torch_device=TORCH_DEVICE,
              xla_flags=os.environ.get('XLA_FLAGS',
                                       ''), omp_wait_policy=os.environ['OMP_WAIT_POLICY'],
              conv_impl=args.conv_impl, dtype=args.dtype)


# --- ours -----------------------------------------------------------------------------


def softmax_ce(outputs, labels):
  """Mean cross-entropy; a distilled DeiT's (cls, dist) pair averages both heads."""
  heads = outputs if isinstance(outputs, tuple) else (outputs,)
  losses = [
      optax.softmax_cross_entropy_with_integer_labels(h.astype(jnp.float32), labels) for h in heads
  ]
  return sum(loss.mean() for loss in losses) / len(heads)


def split_ours(name, img_size, dtype):
  """Our model split once: (eval graphdef, train graphdef, params, rest of the state)."""
  model = create_model(name, num_classes=1000, rngs=nnx.Rngs(0), img_size=img_size, dtype=dtype)
  model.eval()
  eval_graphdef, _, _ = nnx.split(model, nnx.Param, ...)
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return eval_graphdef, graphdef, params, rest


def make_train_step(graphdef, tx, state_treedef):
  """The jitted step takes the whole state as one flat list of arrays: jit flattens nnx
  State pytrees in Python on every call (~10 ms for 700 arrays), a list in C++."""

  def train_step(leaves, images, labels):
    params, rest, opt_state = jax.tree.unflatten(state_treedef, leaves)

    def loss_fn(params):
      model = nnx.merge(graphdef, params, rest, copy=True)
      loss = softmax_ce(model(images), labels)
      _, _, new_rest = nnx.split(model, nnx.Param, ...)  # BN statistics, RNG counts
      return loss, new_rest

    (loss, rest_out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return jax.tree.leaves((optax.apply_updates(params, updates), rest_out, opt_state)), loss

  return jax.jit(train_step, donate_argnums=0)


def ours_calls(name, args, img_size, images, labels) -> dict:
  """{'forward': f, 'train': g}, each running one blocking call of our jitted model."""
  dtype = jnp.bfloat16 if args.dtype == 'bfloat16' else None
  eval_graphdef, graphdef, params, rest = split_ours(name, img_size, dtype)
  tx = optax.adamw(1e-3, weight_decay=0.05)
  leaves, treedef = jax.tree.flatten((params, rest, tx.init(params)))
  train_step = make_train_step(graphdef, tx, treedef)
  forward_fn = jax.jit(lambda params, rest, x: nnx.merge(eval_graphdef, params, rest)(x))
  images, labels = jnp.asarray(images), jnp.asarray(labels)
  state = [leaves]

  def forward():
    params, rest, _ = jax.tree.unflatten(treedef, state[0])
    jax.block_until_ready(forward_fn(params, rest, images))

  def train():
    state[0], loss = train_step(state[0], images, labels)
    jax.block_until_ready(loss)

  return dict(forward=forward, train=train)


# --- timm -----------------------------------------------------------------------------


def create_timm(name: str, img_size: int):
  """timm's model under our name; our ``deit_*_384`` names are timm's 224 models resized."""
  timm_name = name if timm.is_model(name) else name.rsplit('_', 1)[0] + '_224'
  # timm's TinyViT takes any input size and has no img_size argument.
  kwargs = {} if name.startswith('tiny_vit') else dict(img_size=img_size)
  torch.manual_seed(0)
  return timm.create_model(timm_name, pretrained=False, num_classes=1000, **kwargs)


# timm runs where JAX does: on the GPU when torch sees one, else on the CPU.
TORCH_DEVICE = None if torch is None else 'cuda' if torch.cuda.is_available() else 'cpu'


def _sync():
  """CUDA calls return before the GPU finishes: a timed call must wait for it."""
  if TORCH_DEVICE == 'cuda':
    torch.cuda.synchronize()


def timm_calls(name, args, img_size, images, labels, compiled: bool) -> dict:
  """{'forward': f, 'train': g}: timm eager or under torch.compile, channels_last."""
  model = create_timm(name, img_size).to(TORCH_DEVICE, memory_format=torch.channels_last)
  if hasattr(model, 'set_distilled_training'):
    model.set_distilled_training(True)  # train mode returns both heads, as ours does
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
  run = torch.compile(model) if compiled else model
  images = torch.from_numpy(images).permute(
      0, 3, 1, 2).to(TORCH_DEVICE).contiguous(memory_format=torch.channels_last)
  labels = torch.from_numpy(labels).long().to(TORCH_DEVICE)

  def autocast():
    return torch.autocast(TORCH_DEVICE, dtype=torch.bfloat16, enabled=args.dtype == 'bfloat16')

  def forward():
    model.eval()
    with torch.no_grad(), autocast():
      run(images)
    _sync()

  def train():
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with autocast():
      outputs = run(images)
    heads = outputs if isinstance(outputs, tuple) else (outputs,)
    loss = sum(F.cross_entropy(h.float(), labels) for h in heads) / len(heads)
    loss.backward()
    optimizer.step()
    _sync()

  return dict(forward=forward, train=train)


# --- timing ---------------------------------------------------------------------------


class FirstCallTimeout(Exception):
  pass


def first_call_seconds(call, timeout: float | None = None) -> float:
  """Runs the first (compiling) call; raises FirstCallTimeout past ``timeout`` seconds."""

  def expire(signum, frame):
    raise FirstCallTimeout(f'first call over {timeout:.0f} s')

  previous = signal.signal(signal.SIGALRM, expire)
  if timeout:
    signal.setitimer(signal.ITIMER_REAL, timeout)
  start = time.perf_counter()
  try:
    call()
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)
  return time.perf_counter() - start


def images_per_second(call, batch: int, min_seconds: float) -> float:
  calls, start = 0, time.perf_counter()
  while True:
    call()
    calls += 1
    elapsed = time.perf_counter() - start
    if elapsed >= min_seconds:
      return calls * batch / elapsed


def summary(values) -> dict:
  return dict(median=statistics.median(values), min=min(values), max=max(values), runs=list(values))


def benchmark_model(name, args) -> list[dict]:
  """Alternating rounds of every implementation; one result row per mode."""
  conv_ops.set_conv_impl(args.conv_impl)  # read as each step is traced, below
  img_size = args.img_size or model_info(name).input_size
  rng = np.random.default_rng(0)
  images = rng.standard_normal((args.batch, img_size, img_size, 3), dtype=np.float32)
  labels = rng.integers(0, 1000, args.batch).astype(np.int32)
  impls = IMPLS[:1] if args.no_timm else IMPLS[:2] if args.no_compile else IMPLS
  calls = {'ours': ours_calls(name, args, img_size, images, labels)}
  if 'timm_eager' in impls:
    calls['timm_eager'] = timm_calls(name, args, img_size, images, labels, compiled=False)
  if 'timm_compile' in impls:
    calls['timm_compile'] = timm_calls(name, args, img_size, images, labels, compiled=True)

  cells = {(impl, mode): {} for impl in impls for mode in args.modes}
  for (impl, mode), cell in cells.items():
    try:
      timeout = args.compile_timeout if impl == 'timm_compile' else None
      cell['first_call_s'] = first_call_seconds(calls[impl][mode], timeout)
      for _ in range(args.warmup):
        calls[impl][mode]()
    except Exception as e:  # pylint: disable=broad-except
      if impl != 'timm_compile':
        raise
      cell['error'] = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'[:200]
      torch._dynamo.reset()  # pylint: disable=protected-access
    print(
        f'  {name} {impl:12s} {mode:7s} first call: ' +
        (f'{cell["first_call_s"]:.1f} s' if 'first_call_s' in cell else 'n/a') +
        (f' ({cell["error"]})' if 'error' in cell else ''), flush=True)

  rates = {key: [] for key, cell in cells.items() if 'error' not in cell}
  for r in range(args.rounds):
    for impl in impls:
      for mode in args.modes:
        if (impl, mode) in rates:
          rates[impl,
                mode].append(images_per_second(calls[impl][mode], args.batch, args.min_seconds))
    print(
        f'  {name} round {r + 1}/{args.rounds}: '
        + ', '.join(f'{impl}/{mode} {v[-1]:.1f}' for (impl, mode), v in rates.items()), flush=True)

  rows = []
  for mode in args.modes:
    row = dict(model=name, mode=mode, batch=args.batch, img_size=img_size)
    for impl in impls:
      cell = cells[impl, mode]
      if (impl, mode) in rates:
        cell['img_per_s'] = summary(rates[impl, mode])
      row[impl] = cell
    ours = row['ours']['img_per_s']['median']
    for impl, key in (('timm_eager', 'ours_over_eager'), ('timm_compile', 'ours_over_compile')):
      timm_rate = row.get(impl, {}).get('img_per_s')
      row[key] = ours / timm_rate['median'] if timm_rate else None
    rows.append(row)
  return rows


def measure_step_overhead(name, args) -> dict:
  """Host cost per jitted step in ms, at batch 1 and 32x32 (see the module docstring)."""
  _, graphdef, params, rest = split_ours(name, OVERHEAD_IMG_SIZE, None)
  tx = optax.adamw(1e-3, weight_decay=0.05)
  images = jnp.zeros((1, OVERHEAD_IMG_SIZE, OVERHEAD_IMG_SIZE, 3), jnp.float32)
  labels = jnp.zeros((1,), jnp.int32)

  def ms_per_call(step, state):
    for _ in range(3):  # compile and warm up
      *state, out = step(*state, images, labels)
    jax.block_until_ready(out)
    start = time.perf_counter()
    for _ in range(OVERHEAD_CALLS):
      *state, out = step(*state, images, labels)
    jax.block_until_ready((state, out))
    return (time.perf_counter() - start) / OVERHEAD_CALLS * 1e3

  def noop_step(*args):  # the state in and out, donated, and one scalar of work
    *state, _, labels = args
    return (*state, jnp.sum(labels))

  noop = jax.jit(noop_step, donate_argnums=(0, 1, 2))
  noop_flat = jax.jit(lambda leaves, x, y: (leaves, jnp.sum(y)), donate_argnums=0)
  copy = lambda tree: jax.tree.map(jnp.copy, tree)  # each measurement donates its own
  state = (params, rest, tx.init(params))
  leaves, treedef = jax.tree.flatten(state)
  return dict(model=name, batch=1, img_size=OVERHEAD_IMG_SIZE, calls=OVERHEAD_CALLS,
              state_arrays=len(leaves), noop_step_ms=ms_per_call(noop, copy(state)),
              noop_step_flat_ms=ms_per_call(noop_flat, [copy(leaves)]),
              train_step_ms=ms_per_call(make_train_step(graphdef, tx, treedef), [leaves]))


# --- report ---------------------------------------------------------------------------


def format_cell(cell) -> str:
  if 'img_per_s' not in cell:
    return 'n/a' + (f' ({cell["error"]})' if 'error' in cell else '')
  s = cell['img_per_s']
  return f'{s["median"]:.1f} ({s["min"]:.1f}-{s["max"]:.1f})'


def format_table(rows) -> str:
  header = ('model', 'mode', 'ours img/s', 'timm eager img/s', 'timm compile img/s', 'ours/eager',
            'ours/compile')
  lines = [header]
  for row in rows:
    ratio = lambda r: 'n/a' if r is None else f'{r:.2f}x'
    lines.append((row['model'], row['mode'], format_cell(row['ours']),
                  format_cell(row['timm_eager']) if 'timm_eager' in row else 'skipped',
                  format_cell(row['timm_compile']) if 'timm_compile' in row else 'skipped',
                  ratio(row['ours_over_eager']), ratio(row['ours_over_compile'])))
  widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
  fmt = lambda line: ' | '.join(c.ljust(w) for c, w in zip(line, widths))
  return '\n'.join([fmt(lines[0]), '-+-'.join('-' * w for w in widths)]
                   + [fmt(line) for line in lines[1:]])


def main(argv=None):
  args = parse_args(argv)
  limit_threads(args.threads)
  env = environment(args)
  print(' '.join(f'{k}={v}' for k, v in env.items()))
  print(
      f'batch={args.batch} img_size={args.img_size or "model default"} '
      f'rounds={args.rounds} warmup={args.warmup} min_seconds={args.min_seconds} '
      f'compile={"off" if args.no_compile else f"timeout {args.compile_timeout:.0f} s"}',
      flush=True)
  rows = [row for name in args.models for row in benchmark_model(name, args)]
  overhead = measure_step_overhead(args.models[0], args) if 'train' in args.modes else None
  env['load_average_end'] = os.getloadavg()
  print()
  print(format_table(rows))
  if overhead:
    print(f'\nPer-step overhead ({overhead["model"]}, batch 1, {OVERHEAD_IMG_SIZE}x'
          f'{OVERHEAD_IMG_SIZE}, {overhead["state_arrays"]} state arrays): '
          f'no-op step {overhead["noop_step_ms"]:.2f} ms with the (params, rest, opt_state) '
          f'pytrees, {overhead["noop_step_flat_ms"]:.2f} ms as a flat list; '
          f'real train step {overhead["train_step_ms"]:.2f} ms.')
  config = {k: v for k, v in vars(args).items() if k != 'json'}
  os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
  with open(args.json, 'w') as f:
    json.dump(dict(environment=env, config=config, results=rows, step_overhead=overhead), f,
              indent=1)
  print(f'Wrote {args.json}')


if __name__ == '__main__':
  main()
