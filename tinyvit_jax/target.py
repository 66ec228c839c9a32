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
import jax.numpy as jnp

PLATFORMS = ('cpu', 'gpu', 'tpu')
DTYPES = ('float32', 'bfloat16', 'auto')


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
  cuda = platform == 'gpu' and ('cuda' in jax.extend.backend.get_backend().platform_version.lower())
  memory = (jax.local_devices()[0].memory_stats() or {}).get('bytes_limit')
  return Target(platform, cuda, memory)


def current() -> Target:
  """The target of what is traced now: the innermost ``compiling_for``'s, else ``local()``."""
  return _PLANNED[-1] if _PLANNED else local()


def compute_dtype(dtype) -> str:
  """``dtype`` ('float32', 'bfloat16' or a numpy/jax dtype) by name, 'auto' resolved:
  bfloat16 for a GPU or TPU, as the papers trained with mixed precision, float32 for a CPU,
  whose runs and figures stay float32 (the platform compiled for, ``current()``). The one
  rule for students (``config.dtype``) and teachers (``distill.teacher_dtype``)."""
  if dtype == 'auto':
    return 'float32' if current().platform == 'cpu' else 'bfloat16'
  if isinstance(dtype, str) and dtype not in DTYPES:
    raise ValueError(f'dtype={dtype!r}; expected one of {DTYPES}.')
  return jnp.dtype(dtype).name


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
