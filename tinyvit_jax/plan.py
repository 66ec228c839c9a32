"""Plan a recipe for an accelerator this machine does not have: compile every run's jitted
stages for the slice, and say whether each fits, how fast it can run at best, and what
the schedule costs.

  python -m tinyvit_jax.main --config=configs/fpd_21k.py:variant=5m --workdir=W \\
      --plan=v5litepod-16 [--plan_json=FILE] [--plan_fit_batch]

The stages are the functions ``main`` would jit, built by the same code from abstract
state (``nnx.eval_shape``; ``jax.ShapeDtypeStruct``s sharded over a mesh of the slice's
abstract devices, ``chips.devices``): the save pass's teacher step (training's device
augmentation, the teacher at ``teacher_dtype`` placed as ``teacher_sharding`` places it,
top-k) on one host's devices; the student's train step (its optimiser, augmentation,
stored rows or online teacher) and the eval step over the whole slice. No weights are
created, no data read, nothing written. Everything is built under
``target.compiling_for`` the slice, so each formulation is the one the slice runs.

Figures, per stage and per chip: HBM from the executable's ``memory_analysis()`` against
the chip's; XLA's flops per image beside ``models.macs.count_macs`` (a check that the
plan compiled the model it names); a MODELLED step time, the roofline max(flops / peak,
bytes accessed / HBM bandwidth) with XLA's ``cost_analysis()`` counts and the chip's
public specs (``chips``), and from it modelled img/s, MFU, and the schedule's days and
chip-hours; the img/s each host must feed beside the input pipeline's img/s per core
MEASURED on this project's CPU host (``benchmarks/out/data.json``).
"""
import dataclasses
import functools
import json
import math
import os
import re
import time

import jax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tinyvit_jax import chips
from tinyvit_jax import errors
from tinyvit_jax import model_checkpoint
from tinyvit_jax import target as target_lib
from tinyvit_jax.data import augment
from tinyvit_jax.data import loader
from tinyvit_jax.data import order
from tinyvit_jax.data import pipeline
from tinyvit_jax.data import sources
from tinyvit_jax.distill import save_pass
from tinyvit_jax.distill import store
from tinyvit_jax.distill import student
from tinyvit_jax.distill.teachers import jax_teacher
from tinyvit_jax.models import macs
from tinyvit_jax.train import config as config_lib
from tinyvit_jax.train import metrics
from tinyvit_jax.train import step as step_lib
from tinyvit_jax.train import teacher_eval
from tinyvit_jax.train import trainer

GiB = 2**30
# Train and eval examples of the datasets the paper recipes read from files, for the
# schedule only (a plan reads no data): ImageNet-1k (ILSVRC 2012); ImageNet-21k fall 2011,
# all 14.2M images of its 21,841 classes (the recipe's held-out split comes out of these).
KNOWN_SIZES = {'imagenet2012': (1_281_167, 50_000), 'imagenet21k': (14_197_122, None)}
# The input pipeline's img/s per core, measured on this project's CPU host.
DATA_BENCHMARK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              'benchmarks', 'out', 'data.json')
STAGES = ('save_logits', 'train', 'eval')


@dataclasses.dataclass
class Stage:
  """One jitted function of a run, ready to lower: ``fn(*args)``, ``args`` abstract."""
  fn: object
  args: tuple
  weights: object  # the args that are weights and optimiser state the call reads
  inputs: object  # the batch
  batch: int  # images per step over the slice (the save pass: every host's call)
  devices: int  # devices of the slice the step runs on
  model_flops: float  # per image, 2 x count_macs x passes (+ an online teacher's forward)
  knobs: str  # what would make it fit


def plan_recipe(runs: dict, workdir: str, accelerator: str, *, mode: str | None = None,
                fit_batch: bool = False) -> list[dict]:
  """One row per planned stage of every run (``main.check_recipe``'s ``runs``), or of
  stage ``mode`` alone."""
  slice_ = chips.parse(accelerator)
  devices = chips.devices(slice_)
  rows = []
  compiling_for = target_lib.Target(slice_.platform, cuda=slice_.platform == 'gpu',
                                    device_memory=slice_.hbm_bytes)  # GPUs planned: NVIDIA's
  with target_lib.compiling_for(compiling_for):
    for name, config in runs.items():
      run = name or config.model.name
      for stage in STAGES:
        if stage not in ((mode,) if mode else config.stages):
          continue
        row = dict(run=run, stage=stage, accelerator=slice_.name)
        if stage == 'save_logits' and not (config.distill.from_store
                                           and config.distill.kind != 'none'):
          continue
        if stage == 'save_logits' and jax_teacher.check_online(config.distill):
          rows.append(
              dict(
                  row, status='not planned',
                  error=(f'distill.teacher_adapter={config.distill.teacher_adapter!r}: a torch '
                         'teacher runs outside XLA')))
          continue
        build = functools.partial(build_stage, stage, runs=runs, workdir=workdir, devices=devices,
                                  slice_=slice_)
        try:
          built = build(config)
        except ValueError as error:  # e.g. a batch the slice's devices do not split
          rows.append(dict(row, status='does not compile', error=str(error)))
          continue
        row.update(plan_stage(built, slice_))
        row.update(_schedule(stage, config, row, slice_))
        if fit_batch and stage != 'eval' and row['status'] != 'does not compile':
          row['largest_batch_per_chip'] = largest_batch(build, config, row, slice_)
        rows.append(row)
  return rows


def memory_refusal(message: str, arguments_gib: float) -> dict | None:
  """What a TPU compiler error says of a program refused for HBM (GiB per chip), or None
  for any other error. XLA:TPU words it two ways: the temporaries alone (to which the
  arguments add), or the whole use against the HBM it may use, which is less than the
  chip's (15.75 of a v5e's 16 GiB)."""
  temporaries = re.search(r'memory required for HLO temporaries \(([\d.]+)G\)', message)
  if temporaries:
    return dict(temp_gib=float(temporaries[1]), total_gib=float(temporaries[1]) + arguments_gib)
  used = re.search(r'Used ([\d.]+)G of ([\d.]+)G hbm', message)
  if used:
    return dict(total_gib=float(used[1]), capacity_gib=float(used[2]))
  return None


def plan_stage(stage: Stage, slice_: chips.Target) -> dict:
  """Compiles ``stage`` for ``slice_`` and reads its figures."""
  per_chip = stage.batch // stage.devices
  row = dict(batch_per_chip=per_chip)
  started = time.time()
  weights, inputs = _bytes_per_device(stage.weights), _bytes_per_device(stage.inputs)
  row.update(weights_gib=weights / GiB, inputs_gib=inputs / GiB,
             capacity_gib=slice_.hbm_bytes / GiB)
  try:
    compiled = stage.fn.lower(*stage.args).compile(compiler_options=chips.compiler_options(slice_))
  except Exception as error:  # any compiler error is this stage's result, in one line
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    row['compile_seconds'] = time.time() - started
    refused = memory_refusal(first, (weights + inputs) / GiB)
    if refused:
      row.update(refused)
      return dict(row, status='does not fit', error=first[:300], knobs=stage.knobs,
                  headroom_gib=row['capacity_gib'] - row['total_gib'])
    return dict(row, status='does not compile', error=first[:300])
  row['compile_seconds'] = time.time() - started
  memory = compiled.memory_analysis()
  total = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
           + memory.temp_size_in_bytes + memory.generated_code_size_in_bytes)
  row.update(temp_gib=memory.temp_size_in_bytes / GiB, total_gib=total / GiB,
             headroom_gib=(slice_.hbm_bytes - total) / GiB)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  if cost:
    flops, accessed = float(cost.get('flops', 0)), float(cost.get('bytes accessed', 0))
    row['xla_gflop_per_image'] = flops / per_chip / 1e9
  else:  # XLA:GPU gives no cost analysis: the model's count, compute-bound alone
    cost, flops, accessed = {}, stage.model_flops * per_chip, 0.0
  compute, memory_bound = flops / slice_.peak_flops, accessed / slice_.hbm_bandwidth
  seconds = max(compute, memory_bound)
  row.update(compute_seconds=compute, model_gflop_per_image=stage.model_flops / 1e9,
             step_seconds=seconds, images_per_second=stage.batch / seconds)
  if cost:  # without XLA's bytes, the GPU's modelled MFU would be 1 by construction
    row.update(memory_seconds=memory_bound,
               mfu=stage.model_flops * per_chip / seconds / slice_.peak_flops)
  optimal = float(cost.get('optimal_seconds', -1))
  if optimal > 0 and optimal >= seconds:
    row['xla_optimal_seconds'] = optimal
  if total > slice_.hbm_bytes:
    row.update(status='does not fit', knobs=stage.knobs)
  else:
    row['status'] = 'fits'
  return row


def _bytes_per_device(tree) -> int:
  return sum(
      math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
      for leaf in jax.tree.leaves(tree))


def _abstract(shapes: dict, sharding) -> dict:
  return {
      name: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding) for name, s in shapes.items()
  }


def build_stage(stage: str, config, *, runs: dict, workdir: str, devices: list,
                slice_: chips.Target) -> Stage:
  """Run ``config``'s ``stage`` ('save_logits', 'train' or 'eval') as main jits it, over
  ``devices`` of ``slice_``, its arguments abstract; ``runs`` and ``workdir`` locate a
  teacher the recipe makes itself."""
  if stage == 'save_logits':
    return _save_stage(config, runs, workdir, devices, slice_)
  return _student_stage(stage, config, runs, workdir, devices)


def _save_stage(config, runs, workdir, devices, slice_) -> Stage:
  """The save pass's step on one host's devices: ``save_pass.save_logits``'s teacher view
  (training's device augmentation, the teacher's softmax) and ``top_k_rows``."""
  distill = config.distill
  host = chips.devices(chips.one_host(slice_)) if slice_.hosts > 1 else devices
  mesh = pipeline.data_mesh(host)
  batch = order.process_batch_size(config.batch_size, slice_.hosts)
  meta = _teacher_meta(distill, runs, workdir)
  model, normalise = jax_teacher.model_of(distill, config.aug, meta)
  forward, state = jax_teacher.probabilities_fn(model, normalise, mesh, distill.teacher_sharding)
  inputs = save_pass.teacher_inputs(config.aug, mesh, batch, config.num_classes)
  k = distill.k

  def step(state, host_batch):
    return save_pass.top_k_rows(forward(state, inputs(host_batch, labels=False)[0]), k)

  train_augment = augment.make_train_augment(config.aug)
  shapes = loader.batch_shapes(train_augment.host, batch, config.aug.image_size)
  host_batch = _abstract({n: shapes[n] for n in ('image', 'key')}, NamedSharding(mesh, P('data')))
  knobs = [
      'a smaller --config.batch_size for the save pass alone (--mode=save_logits: '
      'its rows do not depend on the batch)'
  ]
  if target_lib.compute_dtype(distill.teacher_dtype) == 'float32':
    knobs.append('--config.distill.teacher_dtype=bfloat16')
  if (distill.teacher_sharding != 'sharded'
      and _bytes_per_device(state) > slice_.hbm_bytes / 10):  # weights worth splitting
    knobs.append('--config.distill.teacher_sharding=sharded')
  return Stage(jax.jit(step), (state, host_batch), state, host_batch, config.batch_size,
               len(host) * slice_.hosts, 2 * macs.count_macs(model, config.aug.image_size),
               ', '.join(knobs))


def _student_stage(stage, config, runs, workdir, devices) -> Stage:
  """``trainer.Run``'s train or eval step over the whole slice."""
  mesh = pipeline.data_mesh(devices)
  model = nnx.eval_shape(lambda: trainer.new_model(config))
  tx = trainer.make_optimizer(config, nnx.state(model, nnx.Param), 1)
  state = step_lib.TrainState.create(model, tx, mesh, ema=config.optim.ema_decay > 0)
  data = NamedSharding(mesh, P('data'))
  if stage == 'eval':
    eval_augment = augment.make_eval_augment(config.eval_aug)
    evaluate = step_lib.make_eval_step(state, mesh, normalise=eval_augment.device,
                                       use_ema=config.optim.ema_decay > 0)
    shapes = loader.batch_shapes(eval_augment.host, config.eval_batch_size,
                                 config.eval_aug.image_size, train=False)
    batch = {n: shapes[n] for n in ('image', 'label', 'mask')}
    if teacher_eval.knows_teacher(config):
      batch['teacher_probs'] = jax.ShapeDtypeStruct((config.eval_batch_size, config.num_classes),
                                                    'float32')
    tree = state.tree()
    batch = _abstract(batch, data)
    weights = (tree['ema'] if config.optim.ema_decay > 0 else tree['params'], tree['rest'])
    return Stage(evaluate, (state.leaves, batch), weights, batch, config.eval_batch_size,
                 len(devices), 2 * macs.count_macs(model, config.eval_aug.image_size),
                 'a smaller --config.eval_batch_size')
  train_augment = augment.make_train_augment(config.aug)
  device_augment = pipeline.make_device_augment(train_augment, mesh, config.batch_size,
                                                config.num_classes, config.label_smoothing)
  batch = loader.batch_shapes(train_augment.host, config.batch_size, config.aug.image_size)
  distill, teacher, teacher_leaves = config.distill, None, None
  flops = 3 * 2 * macs.count_macs(model, config.aug.image_size)  # forward and backward
  if distill.kind != 'none' and distill.from_store:  # the rows StoreTargets joins
    rows = (config.batch_size, distill.k)
    batch.update(teacher_values=jax.ShapeDtypeStruct(rows, 'float16'),
                 teacher_indices=jax.ShapeDtypeStruct(rows, store.index_dtype(config.num_classes)))
  elif distill.kind != 'none':
    meta = _teacher_meta(distill, runs, workdir)
    teacher, teacher_leaves = jax_teacher.online(distill, config.aug, mesh, config.num_classes,
                                                 meta=meta)
    teacher_model, _ = jax_teacher.model_of(distill, config.aug, meta)
    flops += 2 * macs.count_macs(teacher_model, config.aug.image_size)
  train_step = step_lib.make_train_step(state, tx, mesh,
                                        inputs=student.make_inputs(config, device_augment, teacher),
                                        loss_fn=student.make_loss(config),
                                        ema_decay=config.optim.ema_decay)
  batch = _abstract(batch, data)
  knobs = [
      'a smaller --config.batch_size with a larger --config.optim.grad_accum_steps '
      '(the same images per update)', 'a slice of more chips'
  ]
  if config_lib.compute_dtype(config) == 'float32':
    knobs.insert(1, '--config.dtype=bfloat16')
  return Stage(train_step, (state.leaves, batch, teacher_leaves), (state.leaves, teacher_leaves),
               batch, config.batch_size, len(devices), flops, ', '.join(knobs))


def _teacher_meta(distill, runs: dict, workdir: str) -> dict:
  """The teacher's model.json: from the recipe's own run whose export it is (which does
  not exist before that run), else from its checkpoint (its weights are not read)."""
  for name, config in runs.items():
    if name and os.path.abspath(distill.teacher) == os.path.abspath(
        os.path.join(workdir, name, 'export')):
      return dict(model=config.model.name, kwargs=dict(trainer.model_kwargs(config),
                                                       num_classes=config.num_classes),
                  metadata=dict(preprocess=dict(config.eval_aug)))
  try:
    return model_checkpoint.read_model_json(distill.teacher)
  except model_checkpoint.CheckpointError as error:
    raise errors.UserError(
        f'--plan needs the teacher\'s architecture: {error} (its model.json alone is '
        'enough: --config.distill.teacher=DIR).') from None


def _examples(config) -> tuple:
  """(train, eval) examples: a source that reads no files is asked, others looked up."""
  if config.data.source in ('synthetic', 'digits'):
    return tuple(len(sources.from_config(config.data, split)) for split in ('train', 'eval'))
  name = config.data.name or config.data.train.get('name', '')
  return KNOWN_SIZES.get(name, (None, None))


def _pipeline_rate(aug) -> tuple:
  """(img/s per core of this project's host pipeline, which measurement), or (None, why)."""
  if not os.path.exists(DATA_BENCHMARK):
    return None, 'not measured (benchmarks/out/data.json absent)'
  with open(DATA_BENCHMARK) as f:
    results = json.load(f)['results']
  key = 'ours_host_side' if aug.augment_on == 'device' else 'ours'
  return results[key]['img_per_cpu_s']['median'], f'benchmarks/data.py {key}'


def _schedule(stage: str, config, row: dict, slice_: chips.Target) -> dict:
  """Modelled hours and chip-hours of the stage over the recipe's whole schedule, and the
  images per second each host must feed."""
  if 'step_seconds' not in row:
    return {}
  train_examples, eval_examples = _examples(config)
  out = {}
  if stage in ('save_logits', 'train'):
    per_host = row['images_per_second'] / slice_.hosts
    rate, measured = _pipeline_rate(config.aug)
    out.update(host_images_per_second=per_host, pipeline_per_core=rate,
               pipeline_measured_by=measured)
    if rate:
      out['host_cores_needed'] = per_host / rate
  if stage == 'eval':
    examples, calls = eval_examples, config.epochs // config.eval_every_epochs
    batch = config.eval_batch_size
  else:
    examples, batch = train_examples, config.batch_size
    calls = (config.distill.views_per_example or config.epochs
             if stage == 'save_logits' else config.epochs)
  if examples and examples >= batch:
    steps = calls * (-(-examples // batch) if stage == 'eval' else order.steps_per_epoch(
        examples, batch, order.repeats_of(config.data)))
    hours = steps * row['step_seconds'] / 3600
    out.update(schedule_hours=hours, chip_hours=hours * slice_.chips)
  return out


def largest_batch(build, config, row: dict, slice_: chips.Target, compiles: int = 4) -> int | None:
  """The largest per-chip batch found to fit in at most ``compiles`` more compiles (each
  can take minutes): doubling from the planned batch if it fits, halving if not, then
  bisecting (in multiples of 8 above 8) between the largest that fits and the smallest
  that does not. ``build(config)`` gives the stage for a config."""
  per_chip = row['batch_per_chip']
  devices = config.batch_size // per_chip
  fits, fails = (per_chip, None) if row['status'] == 'fits' else (None, per_chip)
  for _ in range(compiles):
    if fits is None:
      trial = fails // 2
    elif fails is None:
      trial = fits * 2
    else:
      trial = (fits + fails) // 2
      trial = trial // 8 * 8 if trial > 8 else trial
      if trial <= fits:
        break
    if trial < 1:
      break
    trial_config = config.copy_and_resolve_references()
    with trial_config.unlocked():
      trial_config.batch_size = trial * devices
    try:
      stage = build(trial_config)
    except ValueError:  # a batch the devices cannot take (odd, under Mixup): stop here
      break
    if plan_stage(stage, slice_)['status'] == 'fits':
      fits = trial
    else:
      fails = trial
  return fits


def problems(rows: list[dict]) -> list[str]:
  """One line per stage that does not fit or does not compile, naming what would help."""
  lines = []
  for row in rows:
    where = f'run {row["run"]}, stage {row["stage"]} on {row["accelerator"]}'
    if row.get('status') == 'does not fit':
      found = row.get('largest_batch_per_chip')
      fit = f' ({found} images a chip fit)' if found else ''
      lines.append(f'{where}: needs {row["total_gib"]:.2f} GiB per chip of '
                   f'{row["capacity_gib"]:.2f} GiB{fit}; try {row["knobs"]}')
    elif row.get('status') == 'does not compile':
      lines.append(f'{where} does not compile: {row["error"]}')
  return lines


TABLE = (('run', 'run'), ('stage', 'stage'), ('status', 'status'), ('batch_per_chip', 'B/chip'),
         ('weights_gib', 'weights GiB'), ('inputs_gib', 'inputs GiB'), ('temp_gib', 'temp GiB'),
         ('total_gib', 'total GiB'), ('headroom_gib', 'headroom GiB'), ('xla_gflop_per_image',
                                                                        'XLA GFLOP/img'),
         ('model_gflop_per_image', 'MACs GFLOP/img'), ('step_seconds', 'modelled step s'),
         ('images_per_second', 'modelled img/s'), ('mfu', 'modelled MFU'), ('schedule_hours',
                                                                            'modelled h'),
         ('chip_hours', 'modelled chip-h'), ('host_cores_needed', 'host cores'), ('compile_seconds',
                                                                                  'compile s'))


def table(rows: list[dict]) -> str:
  """The rows as text: the figures per chip; 'modelled' ones come from the roofline; with
  ``--plan_fit_batch``, the largest batch per chip found to fit."""
  columns = TABLE
  if any('largest_batch_per_chip' in row for row in rows):
    columns = TABLE[:4] + (('largest_batch_per_chip', 'fits at B/chip'),) + TABLE[4:]
  shown = [{title: _round(row.get(key)) for key, title in columns} for row in rows]
  return metrics.summary_table(shown, [title for _, title in columns])


def _round(value):
  if isinstance(value, float):
    return float(f'{value:.3g}')
  return value
