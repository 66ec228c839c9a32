"""Training checkpoints: the whole state at a step, so a restart resumes exactly.

A checkpoint holds the flat state list of ``step.TrainState`` (params, BatchNorm
statistics, RNG counters, optimiser state, EMA) and the step. The data position needs
nothing more: the examples of step ``s`` are a function of ``s`` (``data.order``).

orbax's ``CheckpointManager`` writes each step into a temporary directory and renames it
when complete, so a kill in the middle of a save, or a full disk, leaves the previous
step as the latest (a restart removes the unfinished directory). Saves are asynchronous:
the arrays are copied to the host, then written while training goes on, so a full disk
surfaces at the next save or at ``wait``.

``run.json`` in the workdir records what is being trained (model, constructor arguments,
classes); a workdir holding another model's run is refused rather than overwritten.
"""
import json

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tinyvit_jax import errors
from tinyvit_jax import writes


class WorkdirMismatch(errors.UserError, ValueError):
  """The workdir holds a run of another model."""


def check_workdir_identity(workdir: str, identity: dict) -> None:
  """Records ``identity`` in ``workdir/run.json``, or refuses a workdir of another run."""
  path = epath.Path(workdir) / 'run.json'
  identity = writes.plain_json(identity)
  if path.exists():
    stored = json.loads(path.read_text())
    differences = [
        f'{key}: workdir has {stored.get(key)!r}, this config {identity.get(key)!r}'
        for key in sorted(set(stored) | set(identity))
        if stored.get(key) != identity.get(key)
    ]
    if differences:
      raise WorkdirMismatch(
          f'{workdir} holds a run of another model, refusing to resume or overwrite it: '
          + '; '.join(differences) + '. Use another --workdir, or delete this one.')
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    writes.write_json(str(path), identity, sort_keys=True)


class Checkpoints:
  """Saves and restores the flat training state of one workdir."""

  def __init__(self, directory: str, *, keep: int = 2):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=True,
                                           cleanup_tmp_directories=True)
    self.directory = directory
    self.manager = ocp.CheckpointManager(epath.Path(directory), options=options)
    # orbax removes a killed save's temporary directory in a thread of its own, which a
    # run that stops before its first save (a refused store, say) leaves running at exit,
    # where it fails with a traceback. Finish it here: it lists one directory.
    getattr(self.manager, '_maybe_await_cleanup_tmp_directory', lambda: None)()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, leaves: list) -> None:
    """Starts an asynchronous save of ``leaves`` at ``step`` (PRNG keys as key data)."""
    data = [jax.random.key_data(x) if _is_key(x) else x for x in leaves]
    with self._writing():  # the previous save's error surfaces here
      self.manager.save(
          step, args=ocp.args.Composite(state=ocp.args.StandardSave(data),
                                        meta=ocp.args.JsonSave(dict(step=step))), force=True)

  def restore(self, step: int, template: list, mesh) -> list:
    """The leaves saved at ``step``, replicated on ``mesh``, shaped like ``template``."""
    replicated = NamedSharding(mesh, P())
    target = [
        jax.ShapeDtypeStruct(
            jax.random.key_data(x).shape if _is_key(x) else x.shape,
            jax.random.key_data(x).dtype if _is_key(x) else x.dtype, sharding=replicated)
        for x in template
    ]
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                      meta=ocp.args.JsonRestore()))
    return [
        jax.random.wrap_key_data(data, impl=jax.random.key_impl(x)) if _is_key(x) else data
        for x, data in zip(template, restored['state'])
    ]

  def wait(self) -> None:
    with self._writing():
      self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()

  def resume_hint(self) -> str:
    """Where a rerun of a stopped run goes on: the one wording of every such stop."""
    return f'rerun: it resumes from step {self.latest_step() or 0} in {self.directory}'

  def _writing(self):
    return writes.writing(self.directory, self.resume_hint)


def _is_key(x) -> bool:
  return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
