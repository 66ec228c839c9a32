"""One run's stages, top to bottom: train (with resume), evaluate, export.

``train`` builds the mesh, the model and its optimiser, restores the latest checkpoint
of the workdir if there is one, and loops: step, log, evaluate at epoch ends, checkpoint
every N steps, at the end and on SIGTERM. Losses are fetched from the device only at log
and checkpoint points (fetching every step would stall the pipeline); a non-finite loss
found there stops the run before anything is saved, so the last checkpoint stays good. A
bad read (a damaged logit-store chunk, an image that does not decode) stops it at the step
that needs it, with every step before it saved.
"""
import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tinyvit_jax import errors
from tinyvit_jax import model_checkpoint
from tinyvit_jax import progress
from tinyvit_jax import writes
from tinyvit_jax.data import augment
from tinyvit_jax.data import loader
from tinyvit_jax.data import order
from tinyvit_jax.data import pipeline
from tinyvit_jax.data import sources
from tinyvit_jax.data.sources import decode
from tinyvit_jax.distill import store
from tinyvit_jax.distill import student
from tinyvit_jax.models import create_model
from tinyvit_jax.train import checkpoint
from tinyvit_jax.train import config as config_lib
from tinyvit_jax.train import metrics
from tinyvit_jax.train import optim
from tinyvit_jax.train import pretrained
from tinyvit_jax.train import step as step_lib
from tinyvit_jax.train import teacher_eval

# Reads that stop a run with its state intact, so the steps before them are saved.
BAD_READS = (store.CorruptChunkError, decode.UndecodableImage)


class NonFiniteLoss(errors.UserError, FloatingPointError):
  """The loss became NaN or infinite; the run stopped without saving."""


def model_kwargs(config) -> dict:
  """The constructor arguments a checkpoint records (JSON-able; dtype is how it runs)."""
  return {k: list(v) if isinstance(v, tuple) else v for k, v in config.model.kwargs.items()}


def new_model(config) -> nnx.Module:
  """The run's model as it trains (compute dtype, frozen BatchNorm), randomly initialised;
  under ``nnx.eval_shape`` (a plan) its shapes only."""
  dtype = dict(dtype=jnp.bfloat16) if config_lib.compute_dtype(config) == 'bfloat16' else {}
  model = create_model(config.model.name, num_classes=config.num_classes,
                       rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1),
                       **model_kwargs(config), **dtype)
  if config.optim.freeze_bn:
    step_lib.set_frozen_batchnorm(model)
  return model


def build_model(config) -> nnx.Module:
  """``new_model``, with the weights of ``config.init.checkpoint`` if it names some."""
  model = new_model(config)
  if config.init.checkpoint:
    pretrained.load_into(model, config.init.checkpoint, head=config.init.head)
  return model


def make_optimizer(config, params, steps_per_epoch: int):
  """AdamW per config; with gradient accumulation the schedule counts updates, each of
  ``grad_accum_steps`` batches."""
  o = config.optim
  updates_per_epoch = steps_per_epoch / o.grad_accum_steps
  schedule = optim.make_schedule(base_lr=o.lr,
                                 total_steps=max(1, int(config.epochs * updates_per_epoch)),
                                 warmup_steps=int(o.warmup_epochs * updates_per_epoch),
                                 min_lr=o.min_lr, warmup_lr=o.warmup_lr)
  layer_ids = (optim.layer_ids(params, config.model.name) if o.layer_decay != 1 else None)
  return optim.make_optimizer(params, schedule=schedule, weight_decay=o.weight_decay,
                              clip_grad_norm=o.clip_grad_norm or None,
                              layer_decay=o.layer_decay if o.layer_decay != 1 else None,
                              layer_ids=layer_ids, grad_accum_steps=o.grad_accum_steps)


class Run:
  """The model, optimiser, state and checkpoints of one workdir."""

  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir
    self.mesh = pipeline.data_mesh()
    order.device_batch_size(config.batch_size, self.mesh.size)  # names the numbers
    self.source = sources.from_config(config.data, 'train')
    self.steps_per_epoch = order.steps_per_epoch(len(self.source), config.batch_size,
                                                 order.repeats_of(config.data))
    self.total_steps = config.epochs * self.steps_per_epoch
    model = build_model(config)
    self.tx = make_optimizer(config, nnx.state(model, nnx.Param), self.steps_per_epoch)
    self.state = step_lib.TrainState.create(model, self.tx, self.mesh, ema=config.optim.ema_decay
                                            > 0)
    checkpoint.check_workdir_identity(
        workdir,
        dict(model=config.model.name, kwargs=model_kwargs(config), num_classes=config.num_classes))
    self.checkpoints = checkpoint.Checkpoints(os.path.join(workdir, 'checkpoints'),
                                              keep=config.keep_checkpoints)
    self._eval = None  # (source, host transform, jitted eval step), on first use
    self.step = self.checkpoints.latest_step() or 0
    if self.step:
      self.state.leaves = self.checkpoints.restore(self.step, self.state.leaves, self.mesh)

  def evaluate(self) -> dict:
    """top-1, top-5 and loss on the eval split, with the EMA params when there are any;
    with a teacher, the student's top-1 agreement with it and KL(teacher || student)."""
    config = self.config
    source, transform, evaluate, teacher_rows = self._evaluation()
    sharding = NamedSharding(self.mesh, P('data'))
    totals = None
    for batch in loader.eval_batches(source, global_batch=config.eval_batch_size,
                                     transform=transform, process_index=jax.process_index(),
                                     process_count=jax.process_count()):
      if teacher_rows is not None:  # the rows of this batch's examples, padding included
        batch = dict(batch, teacher_values=teacher_rows.values[batch['index']],
                     teacher_indices=teacher_rows.indices[batch['index']])
      batch = {
          name: jax.make_array_from_process_local_data(sharding, batch[name])
          for name in ('image', 'label', 'mask', 'teacher_values', 'teacher_indices')
          if name in batch
      }
      sums = evaluate(self.state.leaves, batch)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.tree.map(float, totals)
    count = totals['count']
    result = dict(top1=totals['top1'] / count, top5=totals['top5'] / count,
                  loss=totals['loss'] / count, examples=int(count))
    if teacher_rows is not None:
      result.update(teacher_agreement=totals['teacher_agreement'] / count,
                    teacher_kl=totals['teacher_kl'] / count)
    return result

  def _evaluation(self) -> tuple:
    """(eval source, host transform, jitted eval step, the teacher's eval rows or None),
    built once: a new jitted function would recompile each epoch."""
    if self._eval is None:
      config = self.config
      eval_augment = augment.make_eval_augment(config.eval_aug)
      source = sources.from_config(config.data, 'eval')
      teacher_rows = (teacher_eval.rows(config, source, self.workdir)
                      if teacher_eval.knows_teacher(config) else None)
      self._eval = (source, eval_augment.host,
                    step_lib.make_eval_step(self.state, self.mesh, normalise=eval_augment.device,
                                            use_ema=config.optim.ema_decay > 0), teacher_rows)
    return self._eval

  def train(self) -> dict:
    config, workdir = self.config, self.workdir
    if self.step >= self.total_steps:
      return dict(steps=self.step, resumed_from=self.step)
    if teacher_eval.knows_teacher(config):
      self._evaluation()  # a teacher that cannot load stops the run now, not an epoch in
    writer = metrics.MetricsWriter(workdir, is_main=jax.process_index() == 0)
    writer.truncate_after(self.step)
    distill = student.make(config, self.source, workdir, self.mesh)
    data = pipeline.make_input_pipeline(
        self.source, config.aug, seed=config.seed, global_batch=config.batch_size, mesh=self.mesh,
        label_smoothing=config.label_smoothing, start_step=self.step,
        num_steps=self.total_steps - self.step, num_workers=config.data.num_workers,
        host_hook=distill.host_hook, repeats=order.repeats_of(config.data), views=distill.views)
    train_step = step_lib.make_train_step(
        self.state, self.tx, self.mesh, inputs=student.make_inputs(config, data.device_augment,
                                                                   distill.teacher),
        loss_fn=distill.loss, ema_decay=config.optim.ema_decay)
    examples = _ExampleLog(workdir, self.step) if config.record_examples else None
    stop = _StopRequest()
    pending, started, first = [], time.time(), self.step
    bar = progress.train_bar(self.total_steps, self.step, config.batch_size)
    try:
      try:
        for batch in data.batches:
          self.state.leaves, step_metrics = train_step(self.state.leaves, batch,
                                                       distill.teacher_leaves)
          self.step += 1
          bar.update(1)
          pending.append((self.step, step_metrics))
          if examples:
            examples.write(self.step, batch['index'])
          stopping = stop.after_step(self.step)
          epoch_end = self.step % self.steps_per_epoch == 0
          last = self.step == self.total_steps
          if self.step % config.log_every_steps == 0 or last or epoch_end:
            self._flush(pending, writer, started, first)
          if epoch_end and (last or
                            (self.step // self.steps_per_epoch) % config.eval_every_epochs == 0):
            writer.write(self.step, **{f'eval_{k}': v for k, v in self.evaluate().items()})
          if self.step % config.checkpoint_every_steps == 0 or last or stopping:
            self._flush(pending, writer, started, first)
            self.checkpoints.save(self.step, self.state.leaves)
          if stopping:
            break
      except BAD_READS:  # the state is good: keep every step made (one process reads alone)
        if jax.process_count() == 1 and self.checkpoints.latest_step() != self.step:
          self._flush(pending, writer, started, first)
          self.checkpoints.save(self.step, self.state.leaves)
        raise
      finally:
        bar.close()
        stop.restore()
        self.checkpoints.wait()
        writer.close()
    except (writes.DiskFull, *BAD_READS) as error:
      # The saves are done: say where a rerun goes on, and what to do first.
      hint = self.checkpoints.resume_hint()
      if isinstance(error, writes.DiskFull):
        raise writes.DiskFull(error.path, hint) from None
      repair = ('repair the store (README, "When things go wrong"), then ' if isinstance(
          error, store.CorruptChunkError) else '')
      raise type(error)(f'{error} The run stopped before the step that needs it; '
                        f'{repair}{hint}.') from None
    seconds = time.time() - started
    return dict(steps=self.step, resumed_from=first, stopped_by_sigterm=stop.requested,
                images_per_second=(self.step - first) * config.batch_size / max(seconds, 1e-9))

  def _flush(self, pending: list, writer, started: float, first: int) -> None:
    """Fetches the pending step metrics; stops on a non-finite loss before any save."""
    if not pending:
      return
    fetched = jax.device_get([m for _, m in pending])
    for (done, _), values in zip(pending, fetched):
      if not np.isfinite(values['loss']):
        raise NonFiniteLoss(
            f'The loss is {values["loss"]} at step {done}: the run stopped and saved nothing '
            f'after it. The last good checkpoint is step {self.checkpoints.latest_step()} in '
            f'{self.workdir}/checkpoints. Lower --config.optim.lr, set '
            '--config.optim.clip_grad_norm, or check the data.')
    done = pending[-1][0]
    mean = {k: float(np.mean([v[k] for v in fetched])) for k in fetched[0]}
    rate = (done - first) * self.config.batch_size / max(time.time() - started, 1e-9)
    writer.write(done, **mean, epoch=done / self.steps_per_epoch, images_per_second=rate)
    pending.clear()


def export(config, workdir: str, run: Run) -> str:
  """Writes the inference checkpoint (params and BN statistics) to ``workdir/export``, with
  the class names and the eval preprocessing that ``predict`` needs."""
  directory = os.path.join(workdir, 'export')
  model = run.state.inference_model(use_ema=config.optim.ema_decay > 0)
  if jax.process_index() == 0:
    model_checkpoint.save_model(
        directory, model, config.model.name, overwrite=True,
        metadata=dict(labels=_labels(run.source),
                      preprocess=dict(config.eval_aug)), num_classes=config.num_classes,
        **model_kwargs(config))
  return directory


def _labels(source) -> list:
  names = getattr(source, 'class_names', None)
  return list(names) if names is not None else [str(c) for c in range(source.num_classes)]


class _ExampleLog:
  """``examples.jsonl``: the example indices of every step, kept in step with resumes.
  Every process gathers a step's indices (a collective); process 0 writes them."""

  def __init__(self, workdir: str, step: int):
    self.path = os.path.join(workdir, 'examples.jsonl')
    self.is_main = jax.process_index() == 0
    if self.is_main:
      metrics.truncate_jsonl(self.path, step)

  def write(self, step: int, indices) -> None:
    indices = multihost_utils.process_allgather(indices, tiled=True)
    if self.is_main:
      with writes.writing(self.path), open(self.path, 'a') as f:
        f.write(json.dumps(dict(step=step, index=np.asarray(indices).tolist())) + '\n')


class _StopRequest:
  """SIGTERM as a request to checkpoint and stop after a step, the same step on every
  process.

  One process: a SIGTERM handler sets a flag that ``after_step`` reads. Several
  (``jax.distributed``): JAX's preemption service owns SIGTERM and tells every process,
  and ``multihost_utils.reached_preemption_sync_point`` picks the next step all of them
  reach. A flag per process could stop one a step before another, which would then wait
  in that step's collectives, or the checkpoint's, for good.
  """

  def __init__(self):
    self.requested = False
    self._distributed = jax.process_count() > 1
    if not self._distributed:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def after_step(self, step: int) -> bool:
    """Whether to checkpoint ``step`` and stop; call it after every step."""
    if self._distributed and not self.requested:
      self.requested = multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def restore(self):
    if not self._distributed:
      signal.signal(signal.SIGTERM, self._previous)
