"""What made each stage of a workdir: a rerun under another config is refused, or redone
when asked, never answered with the old stage's results.

``stages.json`` keeps, with what each finished stage returned, ``inputs``: a digest of the
run's resolved config and the value of every key the stage reads
(``config.stage_inputs``), with the data's fingerprint where the data are files. A train
stage keeps the same under ``unfinished`` while it runs, so checkpoints made by another
config are not resumed under this one. Paths into the recipe's workdir are kept as
``{workdir}``, so a moved workdir still matches. A redone train starts over (its schedule
and every step depend on the config); what the old one made moves to
``WORKDIR/previous/N/``, nothing is deleted.
"""
import functools
import hashlib
import json
import os

import jax
from absl import logging
from jax.experimental import multihost_utils

from tinyvit_jax import errors
from tinyvit_jax.data import sources
from tinyvit_jax.distill import manifest
from tinyvit_jax.distill import store
from tinyvit_jax.train import config as config_lib
from tinyvit_jax.train import metrics

FILE = 'stages.json'
INPUTS = 'inputs'
UNFINISHED = 'unfinished'
REDO_FLAG = '--redo_changed'
PREVIOUS = 'previous'
# What each stage leaves in its workdir besides its record (save_logits: its store, where
# the config puts it): moved aside, with stages.json, when the stage is redone.
OUTPUTS = {
    'save_logits': (),
    'eval': (),
    'export': ('export', 'curves.png'),
    'train':
        ('checkpoints', 'run.json', metrics.METRICS_FILE, metrics.TENSORBOARD_DIR, 'examples.jsonl')
}
SHOWN = 3  # differing keys a refusal names; the rest are counted


class ConfigChanged(errors.UserError, ValueError):
  """A stage of the workdir was made by another config."""


def read(workdir: str) -> dict:
  path = os.path.join(workdir, FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def recorder(config, recipe_workdir: str):
  """``record(stage)``: what ``stages.json`` keeps of the config that made ``stage``, for
  the stages of one run. The data's fingerprints are taken once, at the first record:
  each lists the run's image folders, which for ImageNet are a million files."""
  fingerprints = functools.cache(lambda: _fingerprints(config))

  def record(stage: str) -> dict:
    entry = dict(digest=_digest(config, recipe_workdir),
                 values=_values(config, stage, recipe_workdir))
    return dict(entry, data=fingerprints()) if fingerprints() else entry

  return record


def changes(config, stage: str, recipe_workdir: str, entry: dict) -> list[str]:
  """``'key OLD, now NEW'`` for each key ``stage`` reads that differs from ``entry``; a
  data path whose data has the recorded fingerprint does not count."""
  if entry['digest'] == _digest(config, recipe_workdir):
    return []
  now, then = _values(config, stage, recipe_workdir), entry['values']
  missing = object()
  keys = sorted(k for k in set(now) | set(then) if now.get(k, missing) != then.get(k, missing))
  paths = [k for k in keys if k in config_lib.data_path_keys(config)]
  if paths and entry.get('data') == _fingerprints(config):
    keys = [k for k in keys if k not in paths]
  return [f'{k} {_show(then.get(k))}, now {_show(now.get(k))}' for k in keys]


def stale(config, workdir: str, recipe_workdir: str) -> dict:
  """Each stage of the run whose record differs from ``config``: stage -> its changes.
  A record from before ``inputs`` existed is taken as this config's, with a warning."""
  done, found = read(workdir), {}
  for stage in config.stages:
    if stage in done:
      entry = done[stage].get(INPUTS)
      if entry is None:
        logging.warning(
            '%s: stage %s was recorded without the config that made it (by an '
            'older version); taken as made by this one.', workdir, stage)
        continue
    elif stage in done.get(UNFINISHED, {}) and _has_checkpoints(workdir):
      entry = done[UNFINISHED][stage]
    else:
      continue
    if changed := changes(config, stage, recipe_workdir, entry):
      found[stage] = changed
  return found


def plan(runs: dict, recipe_workdir: str, mode: str | None, redo: bool) -> dict:
  """Each run's name -> the stages to redo, every run checked before any stage starts.

  A plain rerun refuses a stage made by another config; ``--mode=STAGE`` redoes that
  stage (refusing if a stage it reads is stale); ``redo`` redoes every stale stage.
  """
  redone, refusals = {}, []
  for name, config in runs.items():
    workdir = run_workdir(recipe_workdir, name)
    changed = stale(config, workdir, recipe_workdir)
    if mode:
      before = [s for s in changed if config_lib.STAGES.index(s) < config_lib.STAGES.index(mode)]
      if before:
        refusals.append(f'{workdir}: --mode={mode} reads stage {before[0]}, which was made by '
                        f'another config ({_listed(changed[before[0]])}). Redo it first '
                        f'(--mode={before[0]}), or give {REDO_FLAG} to redo every stage whose '
                        f'inputs changed{_set_aside(changed, workdir)}, or use another '
                        '--workdir.')
      redone[name] = {mode} & set(changed)
    elif changed and not redo:
      stage = next(iter(changed))
      refusals.append(f'{workdir}: stage {stage} was made by another config '
                      f'({_listed(changed[stage])}). Use another --workdir, --mode={stage} to '
                      f'redo that stage, or {REDO_FLAG} to redo every stage whose inputs '
                      f'changed{_set_aside(changed, workdir)}.')
    else:
      redone[name] = set(changed)
  if refusals:
    more = f' ({len(refusals) - 1} more runs too.)' if len(refusals) > 1 else ''
    raise ConfigChanged(refusals[0] + more)
  return redone


def run_workdir(recipe_workdir: str, name: str) -> str:
  """A run's workdir: ``WORKDIR/<name>``, or the recipe's own for a recipe of one run."""
  return os.path.join(recipe_workdir, name) if name else recipe_workdir


def set_aside(config, workdir: str, stages) -> dict:
  """Before ``stages`` are redone: moves what they and the stages after them made (a
  train's checkpoints and logs, an export, a store inside the workdir) and ``stages.json``
  to ``WORKDIR/previous/N/``; returns the records of the stages before them, which stay."""
  first = min(config_lib.STAGES.index(s) for s in stages)
  later = config_lib.STAGES[first:]
  names = [name for stage in later for name in OUTPUTS[stage]]
  path = os.path.relpath(store.location(config.distill, workdir), workdir)
  if 'save_logits' in later and not path.startswith(os.pardir):
    names.append(path)
  done = read(workdir)
  if jax.process_index() == 0:
    previous = os.path.join(workdir, PREVIOUS)
    os.makedirs(previous, exist_ok=True)
    target = os.path.join(previous, str(len(os.listdir(previous))))
    os.makedirs(target)
    for name in names + [FILE]:
      if os.path.exists(os.path.join(workdir, name)):
        os.replace(os.path.join(workdir, name), os.path.join(target, name))
    logging.warning('%s: redoing %s under the changed config; what was there is in %s.', workdir,
                    ', '.join(s for s in later if s in config.stages), target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('stage_records.set_aside')
  return {stage: done[stage] for stage in config_lib.STAGES[:first] if stage in done}


def _values(config, stage: str, recipe_workdir: str) -> dict:
  return json.loads(
      _relative(json.dumps(config_lib.stage_inputs(config, stage), default=str), recipe_workdir))


def _digest(config, recipe_workdir: str) -> str:
  text = _relative(config.to_json_best_effort(sort_keys=True), recipe_workdir)
  return hashlib.sha256(text.encode()).hexdigest()


def _relative(text: str, recipe_workdir: str) -> str:
  """In JSON ``text``, paths into the recipe's workdir as ``{workdir}``, as the recipe
  writes them (main fills the placeholder with ``--workdir`` as given)."""
  quoted = json.dumps(recipe_workdir.rstrip('/'))[:-1]  # '"W', for '"W"' and '"W/...'
  return text.replace(quoted + '"', '"{workdir}"').replace(quoted + '/', '"{workdir}/')


def _fingerprints(config) -> dict:
  """Each split's ``manifest.dataset_fingerprint`` when the run's data are files."""
  if not config_lib.data_path_keys(config):
    return {}
  return {
      split: manifest.dataset_fingerprint(sources.from_config(config.data, split))
      for split in config_lib.SPLIT_FOLDERS
  }


def _has_checkpoints(workdir: str) -> bool:
  directory = os.path.join(workdir, 'checkpoints')
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def _set_aside(changed: dict, workdir: str) -> str:
  if 'train' not in changed:
    return ''
  return f' (train starts over; its old outputs move to {os.path.join(workdir, PREVIOUS)}/)'


def _listed(changed: list[str]) -> str:
  more = f'; and {len(changed) - SHOWN} more' if len(changed) > SHOWN else ''
  return '; '.join(changed[:SHOWN]) + more


def _show(value) -> str:
  text = json.dumps(value)
  return text if len(text) <= 40 else text[:37] + '...'
