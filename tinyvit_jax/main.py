"""The entry point: runs a recipe's stages in a workdir, skipping those already done.

  python -m tinyvit_jax.main --config=configs/quickstart.py --workdir=/tmp/qs
  python -m tinyvit_jax.main --config=configs/in1k.py:variant=5m --workdir=DIR \\
      --data_dir=/mnt/gcs/bucket/tfds [--config.KEY=VALUE ...] [--mode=train] [--distributed]

A recipe is one run (a config) or several (``config.runs``: name -> config, each in
``WORKDIR/<name>``, in the order of ``config.run_order``; a run may name another's export
or store through the ``{workdir}`` placeholder). A run's stages are ``save_logits`` (only
when it distils from a logit store that is not complete), ``train``, ``eval`` and
``export``; what each finished stage returned is kept in ``stages.json``, and a restart
goes on from the first unfinished one (``train`` itself resumes from its last
checkpoint). A run holds its workdir's lock (``train/workdir_lock.py``): a second run of
the same workdir is refused. ``--mode=STAGE`` runs one stage of every run, done or not.
Each finished stage records the config that made it; a rerun under a config that differs in
anything the stage reads is refused before any stage starts, unless ``--mode`` redoes that
stage or ``--redo_changed`` every changed one (``train/stage_records.py``).
``--check`` runs the checks a run starts with (the recipe, every override, every run's
config) and exits, touching no device, data or workdir (nor its lock): the launchers run
it before they start machines. ``--plan=SLICE`` compiles every run's stages for a TPU
slice this machine does not have and prints whether each fits (``plan.py``), touching no
device, data or workdir either.
"""
import contextlib
import logging as std_logging
import os
import sys

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from tinyvit_jax import chips
from tinyvit_jax import compile_cache
from tinyvit_jax import errors
from tinyvit_jax import fault_broadcast
from tinyvit_jax import plan
from tinyvit_jax import writes
from tinyvit_jax.data import order
from tinyvit_jax.data import sources
from tinyvit_jax.distill import save_pass
from tinyvit_jax.distill import store
from tinyvit_jax.distill import verify
from tinyvit_jax.distill.teachers import factory
from tinyvit_jax.distill.teachers import torch_teacher
from tinyvit_jax.train import config as config_lib
from tinyvit_jax.train import metrics
from tinyvit_jax.train import stage_records
from tinyvit_jax.train import trainer
from tinyvit_jax.train import workdir_lock

_CONFIG = config_flags.DEFINE_config_file('config', None, 'A recipe: configs/<name>.py[:args].',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, logits and logs go.')
_MODE = flags.DEFINE_enum('mode', None, config_lib.STAGES, 'Run only this stage.')
_REDO = flags.DEFINE_bool(
    stage_records.REDO_FLAG[2:], False, 'Redo every stage whose config changed, and the '
    'stages after it; a redone train starts over, its old checkpoints moved to '
    'WORKDIR/previous/N.')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False,
                                 'Call jax.distributed.initialize() first (TPU pods, SLURM).')
_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, "The recipe's data: a tfds data_dir (every split), or a folder holding "
    'train/ and val/ ArrayRecord (or image) folders. Fills each data path no --config flag '
    'gives; a recipe that reads no files (quickstart) refuses it.')
_CHECK = flags.DEFINE_bool(
    'check', False, 'Check the recipe, the flags and every run as a run does before its '
    'first stage, then exit: no devices, data or workdir are touched.')
_PLAN = flags.DEFINE_string(
    'plan', None, 'Compile every run\'s stages for this accelerator (a Cloud TPU type such '
    'as v5litepod-16 or v4-32, or a libtpu topology such as v5e:2x2) without one, print '
    'whether each fits and its modelled speed, then exit: no devices, data or workdir are '
    'touched. Exit status 3 when a stage does not fit or does not compile.')
_PLAN_JSON = flags.DEFINE_string('plan_json', None, 'With --plan: also write its rows here.')
_PLAN_FIT_BATCH = flags.DEFINE_bool(
    'plan_fit_batch', False, 'With --plan: also search the largest per-chip batch that fits '
    '(a few more compiles per stage).')
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    'heartbeat_timeout', 100, 'With --distributed: seconds without heartbeats after which a '
    'process counts as dead, and JAX stops every other process (rather than let it hang).')

SIGTERM_EXIT = 143  # the run stopped on SIGTERM after checkpointing; rerun to resume
PLAN_DOES_NOT_FIT = 3  # --plan: a stage does not fit the accelerator, or does not compile
PLAN_DATA_DIR = '/data'  # --plan without --data_dir: a plan reads no data, any path will do


def run_recipe(config, workdir: str, mode: str | None = None, data_dir: str | None = None,
               redo: bool = False) -> list[dict]:
  """Runs every run of the recipe; returns one summary row per run."""
  runs = check_recipe(config, workdir, data_dir)
  redone = stage_records.plan(runs, workdir, mode, redo)
  rows = []
  for name, run_config in runs.items():
    rows.append(
        dict(
            run=name or run_config.model.name,
            **run_stages(run_config, stage_records.run_workdir(workdir, name), mode,
                         redo=redone[name], recipe_workdir=workdir)))
  if jax.process_index() == 0:
    writes.write_json(os.path.join(workdir, 'summary.json'), rows)
    print(metrics.summary_table(rows), flush=True)
  return rows


def check_recipe(config, workdir: str, data_dir: str | None = None) -> dict:
  """Each run's name -> its config as it runs (``{workdir}`` filled, ``data_dir`` applied),
  every run checked before the first stage of the first starts."""
  config_lib.check_local_path(workdir, '--workdir')
  if data_dir:
    config_lib.check_local_path(data_dir, '--data_dir')
  runs, data_keys = {}, []
  for name, run_config in config_lib.runs(config).items():
    run_config = _resolve_workdir(run_config, workdir)
    if data_dir:
      data_keys += config_lib.fill_data_dir(run_config, data_dir)
    try:
      config_lib.check_config(run_config)
    except config_lib.ConfigError as error:
      raise config_lib.ConfigError(f'runs.{name}: {error}' if name else str(error)) from None
    runs[name] = run_config
  if data_dir and not data_keys:
    sources = sorted({run.data.source for run in runs.values()})
    raise config_lib.ConfigError(f'--data_dir={data_dir!r}: this recipe reads no data files '
                                 f'(data.source {", ".join(sources)}); drop --data_dir.')
  return runs


def run_stages(config, workdir: str, mode: str | None, *, redo=(),
               recipe_workdir: str | None = None) -> dict:
  """Runs one run's stages, holding its workdir's lock, redoing ``redo`` (what
  ``stage_records.plan`` chose); returns its summary (model, accuracy, agreement with its
  teacher if it has one, speed)."""
  os.makedirs(workdir, exist_ok=True)
  with workdir_lock.hold(workdir):
    return _run_stages(config, workdir, mode, redo, recipe_workdir or workdir)


def _save_logits(config, workdir: str) -> dict:
  """The FPD save stage: the run's teacher over every epoch of its augmented images (a
  bounded store: its ``distill.views_per_example`` first epochs) into its store, then
  checked against the teacher (``verify``) when the config asks. Returns where, and
  verify's figures."""
  teacher = factory.make_teacher(config.distill, config.aug, config.num_classes)
  path = store.location(config.distill, workdir)
  source = sources.from_config(config.data, 'train')
  views = config.distill.views_per_example
  epochs = views or config.epochs  # a bounded store's views are its first epochs
  save_pass.save_logits(teacher, source, dataset_name=config.data.name or config.data.source,
                        aug_config=config.aug, seed=config.seed, epochs=epochs, k=config.distill.k,
                        store_path=path, global_batch=config.batch_size,
                        num_workers=config.data.num_workers, repeats=order.repeats_of(config.data),
                        views=views)
  result = dict(store=path, epochs=epochs)
  if config.distill.verify_rows:
    result.update(
        verify.verify(path, teacher, source, sample=config.distill.verify_rows, seed=config.seed,
                      min_top1_agreement=config.distill.verify_min_top1,
                      max_mean_abs_diff=config.distill.verify_max_mean_abs_diff))
  del teacher
  torch_teacher.release_gpu_memory()
  return result


def _run_stages(config, workdir: str, mode: str | None, redo, recipe_workdir: str) -> dict:
  record_path = os.path.join(workdir, stage_records.FILE)
  done = (stage_records.set_aside(config, workdir, redo) if redo else stage_records.read(workdir))
  run, record = None, stage_records.recorder(config, recipe_workdir)
  for stage in [mode] if mode else config.stages:
    if stage in done and not mode:
      logging.info('%s: stage %s already done', workdir, stage)
      continue
    if stage == 'save_logits':
      if not (config.distill.from_store and config.distill.kind != 'none'):
        continue
      path = store.location(config.distill, workdir)
      outside = os.path.commonpath([os.path.abspath(path),
                                    os.path.abspath(workdir)]) != (os.path.abspath(workdir))
      with workdir_lock.hold(path, 'logit store') if outside else contextlib.nullcontext():
        result = _save_logits(config, workdir)
    else:
      run = run or trainer.Run(config, workdir)
      if stage == 'train':
        done[stage_records.UNFINISHED] = dict(train=record('train'))  # what made the checkpoints
        if jax.process_index() == 0:
          writes.write_json(record_path, done)
        result = run.train()
        if result.get('stopped_by_sigterm'):
          logging.warning('SIGTERM: checkpointed step %d in %s; rerun to resume.', result['steps'],
                          workdir)
          sys.exit(SIGTERM_EXIT)
      elif stage == 'eval':
        result = run.evaluate()
      else:
        result = dict(directory=trainer.export(config, workdir, run))
        if jax.process_index() == 0:
          metrics.plot_curves(workdir, os.path.join(workdir, 'curves.png'))
    done[stage] = dict(result, **{stage_records.INPUTS: record(stage)})
    if stage == 'train':
      done.pop(stage_records.UNFINISHED, None)  # its checkpoints are the finished stage's
    if jax.process_index() == 0:
      writes.write_json(record_path, done)
  evaluated = done.get('eval', {})
  agreement = {
      key: evaluated[key] for key in ('teacher_agreement', 'teacher_kl') if key in evaluated
  }  # only a run with a teacher has them
  return dict(model=config.model.display_name or config.model.name, distill=config.distill.kind,
              top1=evaluated.get('top1'), top5=evaluated.get('top5'), **agreement,
              train_images_per_second=done.get('train', {}).get('images_per_second'))


def _resolve_workdir(config, workdir: str):
  """Fills the ``{workdir}`` placeholder of paths that point into the recipe's workdir."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for section, key in (('distill', 'teacher'), ('distill', 'store'), ('init', 'checkpoint')):
      config[section][key] = config[section][key].format(workdir=workdir)
  return config


def main(argv):
  if len(argv) > 1:
    sys.exit(
        errors.refuse(f'unexpected arguments {argv[1:]}; flags are --name=value (see '
                      '--help).'))
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; -v 0 shows it
  for logger in (logging.get_absl_logger(), std_logging.getLogger('asyncio')):
    logger.addFilter(writes.QuietFullDisk())  # orbax's writers log what DiskFull says
  writes.quiet_abandoned_writes()
  if _PLAN.value:
    chips.compile_only()  # before jax starts: the plan compiles for chips it does not use
  try:
    if _CHECK.value:
      runs = check_recipe(_CONFIG.value, _WORKDIR.value, _DATA_DIR.value)
      recipe = config_flags.get_config_filename(flags.FLAGS['config'])
      print(f'ok: {recipe} checked ({", ".join(runs) or "one run"})')
      return
    if _PLAN.value:
      plan_recipe(_CONFIG.value, _WORKDIR.value, _PLAN.value, _PLAN_JSON.value,
                  _PLAN_FIT_BATCH.value, _DATA_DIR.value, _MODE.value)
      return
    torch_teacher.share_gpu_with_jax(run.distill for run in config_lib.runs(_CONFIG.value).values())
    compile_cache.enable()
    if _DISTRIBUTED.value:
      initialize_distributed(_HEARTBEAT_TIMEOUT.value)
    with fault_broadcast.shared():  # a fault on one process stops all with its line
      run_recipe(_CONFIG.value, _WORKDIR.value, _MODE.value, _DATA_DIR.value, _REDO.value)
  except errors.UserError as error:  # one line, no traceback
    sys.exit(errors.refuse(error))


def plan_recipe(config, workdir: str, accelerator: str, json_path: str | None = None,
                fit_batch: bool = False, data_dir: str | None = None,
                mode: str | None = None) -> list[dict]:
  """``--plan``: prints the table of every run's stages (or stage ``mode``'s) compiled
  for ``accelerator``; exits with ``PLAN_DOES_NOT_FIT`` and one ``error:`` line when a
  stage does not fit or does not compile."""
  if data_dir is None and any(
      run.data.source in config_lib.DATA_PATH_KEYS for run in config_lib.runs(config).values()):
    data_dir = PLAN_DATA_DIR
  rows = plan.plan_recipe(check_recipe(config, workdir, data_dir), workdir, accelerator, mode=mode,
                          fit_batch=fit_batch)
  if json_path:
    writes.write_json(json_path, rows)
  print(plan.table(rows), flush=True)
  problems = plan.problems(rows)
  if problems:
    print(
        f'error: {problems[0]}' +
        (f' (and {len(problems) - 1} more above)' if len(problems) > 1 else ''), flush=True)
    sys.exit(PLAN_DOES_NOT_FIT)
  return rows


def initialize_distributed(heartbeat_timeout: int = 100) -> None:
  """``jax.distributed.initialize``: auto-detected on TPU pods and under SLURM; elsewhere
  from ``JAX_COORDINATOR_ADDRESS`` (which JAX reads) with ``JAX_NUM_PROCESSES`` and
  ``JAX_PROCESS_ID`` (which it does not, so they are passed here). A process silent for
  ``heartbeat_timeout`` seconds (killed, its host lost) makes JAX abort the others with
  "another task died", so a crash ends the run; a restart resumes from the checkpoint."""
  explicit = {}
  if 'JAX_NUM_PROCESSES' in os.environ and 'JAX_PROCESS_ID' in os.environ:
    explicit = dict(num_processes=int(os.environ['JAX_NUM_PROCESSES']),
                    process_id=int(os.environ['JAX_PROCESS_ID']))
  jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout, **explicit)


def _check_overrides(argv) -> None:
  """A wrong recipe path or argument, or a misspelt ``--config.key`` (with the nearest
  valid names), is one line instead of a traceback."""
  config_arg = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  keys = [a[len('--config.'):].split('=', 1)[0] for a in argv if a.startswith('--config.')]
  if config_arg is None:
    return
  path, _, arg = config_arg.partition(':')
  try:
    recipe = config_lib.load_recipe(path)
  except FileNotFoundError as error:
    sys.exit(errors.refuse(f'--config={config_arg}: {error}'))
  try:
    config = recipe.get_config(*([arg] if arg else []))
  except ValueError as error:
    sys.exit(errors.refuse(f'--config={config_arg}: {error}'))
  config_lib.check_override_keys(config, keys)


def _parse_flags(argv):
  """absl's parser, with its errors (a value of the wrong type, a missing flag) as one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    sys.exit(errors.refuse(error))


def run(argv=None):
  argv = sys.argv if argv is None else argv
  try:
    _check_overrides(argv)
  except errors.UserError as error:
    sys.exit(errors.refuse(error))
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main, argv, flags_parser=_parse_flags)


if __name__ == '__main__':
  run()
