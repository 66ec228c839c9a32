"""The platform and chip a program is compiled for: the one place every backend-dependent
choice asks (the conv and attention formulations, ``dtype='auto'``, the teacher's
sharding line).

By default that is this process's own backend. A plan (``tinyvit_jax.plan``) compiles for
a machine it does not run on, e.g. a TPU slice from a CPU host, where
``jax.default_backend()`` stays 'cpu'; under ``with compiling_for(target):`` every choice
follows ``target`` instead, so the plan compiles what the slice will run. Choices are made
when a function is traced: hold the context over building the model and ``.lower()``.
"""
import contextlib
import functools
from typing import NamedTuple

import jax
import jax.extend

PLATFORMS = ('cpu', 'gpu', 'tpu')


class Target(NamedTuple):
  """``platform``: 'cpu', 'gpu' or 'tpu'; ``cuda``: an NVIDIA GPU (cuDNN's kernels);
  ``device_memory``: bytes one device holds, None where the backend keeps no such figure
  (a CPU)."""
  platform: str
  cuda: bool = False
  device_memory: int | None = None


_PLANNED: list[Target] = []


@functools.cache
def local() -> Target:
  """This process's backend and its first local device."""
  platform = jax.default_backend()
  cuda = platform == 'gpu' and (
      'cuda' in jax.extend.backend.get_backend().platform_version.lower())
  memory = (jax.local_devices()[0].memory_stats() or {}).get('bytes_limit')
  return Target(platform, cuda, memory)


def current() -> Target:
  """The target of what is traced now: the innermost ``compiling_for``'s, else ``local()``."""
  return _PLANNED[-1] if _PLANNED else local()


@contextlib.contextmanager
def compiling_for(target: Target):
  """Every choice made inside (at trace time) follows ``target``."""
  if target.platform not in PLATFORMS:
    raise ValueError(f'platform={target.platform!r}; expected one of {PLATFORMS}.')
  _PLANNED.append(target)
  try:
    yield target
  finally:
    _PLANNED.pop()


def place(tree, sharding):
  """``jax.device_put(tree, sharding)``; a tree of abstract leaves (``jax.ShapeDtypeStruct``,
  a plan's weights and state, which exist nowhere) gets the same shapes with the sharding
  (one, or a tree of them matching ``tree``)."""
  leaves = jax.tree.leaves(tree)
  if not leaves or not isinstance(leaves[0], jax.ShapeDtypeStruct):
    return jax.device_put(tree, sharding)
  abstract = lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s)
  if isinstance(sharding, jax.sharding.Sharding):
    return jax.tree.map(lambda leaf: abstract(leaf, sharding), tree)
  return jax.tree.map(abstract, tree, sharding)
