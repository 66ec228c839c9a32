"""XLA's persistent compilation cache, shared by every entry point (train, predict, convert)."""
import os

import jax

ENV = 'TINYVIT_JAX_COMPILATION_CACHE'


def enable() -> None:
  """Keeps compiled programs on disk, so a resumed or repeated run skips most of its
  compile time (benchmarks/RESULTS.md, "Test suite (CI time)"). Every program is kept,
  however quick to compile: a model's initialisers are dozens of small programs, one per
  weight shape. The directory is ``$TINYVIT_JAX_COMPILATION_CACHE`` (empty: off), by
  default ``~/.cache/tinyvit_jax/xla``."""
  directory = os.environ.get(ENV,
                             os.path.join(os.path.expanduser('~'), '.cache', 'tinyvit_jax', 'xla'))
  if directory:
    jax.config.update('jax_compilation_cache_dir', directory)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
