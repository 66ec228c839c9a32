"""The accelerators a run can be planned for: the names users type, and what each chip has.

A TPU target is named as Cloud TPU's accelerator types are (``v4-32``, ``v5litepod-16``,
``v5p-8``, ``v6e-8``, Colab's ``v2-8`` / ``v5e-1``) or as libtpu's topologies are
(``v5e:4x4``). v2, v3, v4 and v5p names count TensorCores, v5e and v6e names count chips.
A GPU target is ``h100`` or ``h200``, one GPU. ``devices`` gives a whole slice's abstract
devices to one process, multi-host slices included, so that
``jax.jit(...).lower(...).compile()`` builds the slice's program on a machine without the
chips: libtpu compiles for a TPU, jax's CUDA plugin for a GPU (``jax[cuda13]``; neither
needs the chip).

Figures are public specs, per device: a chip, except on v2 and v3, where each TensorCore
is its own device with half the chip's memory, peak and bandwidth. A GPU's memory and
bandwidth are its XLA spec's (``gpu_specs/``), its peak NVIDIA's dense bf16 figure.
"""
import dataclasses
import functools
import importlib.util
import math
import os
import re

import jax
from jax.experimental import topologies

from tinyvit_jax import errors

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Target:
  """One slice: its names, its shape, and each device's memory and speed."""
  name: str  # the Cloud accelerator type, e.g. 'v5litepod-16'
  topology: str  # libtpu's name for its shape, e.g. 'v5e:4x4'
  chips: int
  hosts: int
  devices: int  # JAX devices: chips, or 2 per chip on v2/v3
  hbm_bytes: int  # per device
  peak_flops: float  # bf16 dense, per device, flop/s
  hbm_bandwidth: float  # per device, bytes/s
  device_kind: str = ''  # as jax names its devices: 'TPU v5 lite'
  platform: str = 'tpu'  # or 'gpu' (jax's names)
  # libtpu's arguments that shape the description as the slice is built: one device per
  # chip on v4/v5p ('megacore'), and the chips each host holds.
  topology_args: tuple = ()
  gpu_spec: str = ''  # a GPU's XLA GpuTargetConfig, a file in gpu_specs/

  @property
  def chips_per_host(self) -> int:
    return self.chips // self.hosts


@dataclasses.dataclass(frozen=True)
class _Family:
  cloud: str  # the Cloud name's prefix: 'v5litepod' in 'v5litepod-16'
  libtpu: str  # libtpu's: 'v5e' in 'v5e:4x4'
  shapes: dict  # chips -> the slice's shape
  counts_cores: bool  # the Cloud name counts TensorCores (2 per chip), not chips
  core_is_device: bool  # each TensorCore is a JAX device (v2, v3)
  hbm_gib: float  # per chip
  peak_tflops: float  # bf16, per chip
  bandwidth_tbs: float  # per chip
  device_kind: str  # as jax names the devices
  megacore: bool = False
  aliases: tuple = ()  # other Cloud prefixes for the same chip


def _cubes(smallest, largest):
  """v4 and v5p slices grow by doubling their shortest side, the last of equals first:
  2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8, ..."""
  shape, shapes = [2, 2, 1], {}
  while math.prod(shape) <= largest:
    if math.prod(shape) >= smallest:
      shapes[math.prod(shape)] = tuple(shape)
    low = min(shape)
    shape[max(i for i in range(3) if shape[i] == low)] *= 2
  return shapes


_PLANES = {
    1: (1, 1),
    4: (2, 2),
    8: (2, 4),
    16: (4, 4),
    32: (4, 8),
    64: (8, 8),
    128: (8, 16),
    256: (16, 16)
}

_FAMILIES = (
    _Family('v2', 'v2', {4: (2, 2)}, True, True, 16, 45, 0.7, 'TPU v2'),
    _Family('v3', 'v3', {4: (2, 2)}, True, True, 32, 123, 0.9, 'TPU v3'),
    _Family('v4', 'v4', _cubes(4, 2048), True, False, 32, 275, 1.2, 'TPU v4', megacore=True),
    _Family('v5litepod', 'v5e', _PLANES, False, False, 16, 197, 0.82, 'TPU v5 lite',
            aliases=('v5e',)),
    _Family('v5p', 'v5p', _cubes(4, 4096), True, False, 95, 459, 2.76, 'TPU v5', megacore=True),
    _Family('v6e', 'v6e', _PLANES, False, False, 32, 918, 1.64, 'TPU v6 lite'),
)


class UnknownAccelerator(errors.UserError):

  def __init__(self, name):
    super().__init__(
        f'unknown accelerator {name!r}: name a Cloud TPU type (v2-8, v3-8, v4-8 ... v4-4096, '
        'v5litepod-1/4/8/16/.../256 (or v5e-N), v5p-8 ... v5p-8192, v6e-1/4/8/16/.../256), '
        "a libtpu topology such as 'v5e:2x2' or 'v4:2x2x4', or a GPU: h100, h200")


def _hosts(family, chips):
  """Hosts in the slice: a host holds 2x2 chips, or all of a v5e/v6e slice of up to 8."""
  if family.libtpu in ('v5e', 'v6e') and chips <= 8:
    return 1
  return max(1, chips // 4)


def _target(family, chips):
  hosts = _hosts(family, chips)
  shape = family.shapes[chips]
  per_host = (2, 2, 1) if hosts > 1 else shape + (1,) * (3 - len(shape))
  args = (('chips_per_host_bounds', per_host),)
  if family.megacore:
    args += (('chip_config_name', 'megacore'),)
  split = 2 if family.core_is_device else 1
  return Target(name=f'{family.cloud}-{chips * 2 if family.counts_cores else chips}',
                topology=f'{family.libtpu}:' + 'x'.join(map(str, shape)), chips=chips, hosts=hosts,
                devices=chips * split, hbm_bytes=int(family.hbm_gib * GiB) // split,
                peak_flops=family.peak_tflops * 1e12 / split,
                hbm_bandwidth=family.bandwidth_tbs * 1e12 / split, device_kind=family.device_kind,
                topology_args=args)


_SPECS = os.path.join(os.path.dirname(__file__), 'gpu_specs')


def _gpu(name, spec, peak_tflops):
  with open(os.path.join(_SPECS, spec)) as f:
    text = f.read()
  field = lambda key: re.search(rf'^\s*{key}: (.+)$', text, re.M).group(1)
  return Target(name=name, topology='1x1x1', chips=1, hosts=1, devices=1,
                hbm_bytes=int(field('device_memory_size')), peak_flops=peak_tflops * 1e12,
                hbm_bandwidth=float(field('memory_bandwidth')),
                device_kind=field('device_description_str').strip('"'), platform='gpu',
                gpu_spec=spec)


_TARGETS = {t.name: t for f in _FAMILIES for t in (_target(f, c) for c in f.shapes)}
_TARGETS.update(h100=_gpu('h100', 'h100.txtpb', 989), h200=_gpu('h200', 'h200.txtpb', 989))


def known() -> tuple:
  """Every Cloud name ``parse`` accepts, in the families' order."""
  return tuple(_TARGETS)


def parse(name: str) -> Target:
  """The target a Cloud accelerator type or a libtpu topology names."""
  if name in _TARGETS:
    return _TARGETS[name]
  for t in _TARGETS.values():
    if t.platform == 'tpu' and name == t.topology or name == t.topology + 'x1':
      return t
  prefix, _, count = name.partition('-')
  for f in _FAMILIES:
    if prefix in f.aliases and f'{f.cloud}-{count}' in _TARGETS:
      return _TARGETS[f'{f.cloud}-{count}']
  raise UnknownAccelerator(name)


def for_devices(device_kind: str, count: int) -> Target | None:
  """The target whose devices these are (``jax.devices()``'s kind and count, e.g. a Colab
  runtime's 'TPU v2' x 8: v2-8), None when no known target has them."""
  for t in _TARGETS.values():
    if (t.device_kind, t.devices) == (device_kind, count):
      return t
  return None


def one_host(target: Target) -> Target:
  """The slice of one of ``target``'s hosts, for a program each host runs alone (the save
  pass): libtpu will not compile for a subset of a slice's devices (a fatal check, "device_id
  4 in replica group (0,1,2,3)"), and a host's chips are a slice of their own shape."""
  if target.hosts == 1:
    return target
  family, shape = target.topology.split(':')
  per_host = dict(target.topology_args)['chips_per_host_bounds'][:shape.count('x') + 1]
  return dataclasses.replace(target, topology=f'{family}:' + 'x'.join(map(str, per_host)),
                             chips=target.chips_per_host, hosts=1,
                             devices=target.devices // target.hosts)


def devices(target: Target) -> list:
  """The slice's abstract devices, all of them, for one process to compile for."""
  return list(_topology(target).devices)


def compiler_options(target: Target) -> dict:
  """XLA options that ``.compile(compiler_options=...)`` needs for this target. Without a
  GPU, XLA's Triton GEMMs and its autotuning fail ("Couldn't find output tile sizes"): a
  GPU plan compiles cuBLAS's GEMMs, untuned, so its memory is indicative, not exact."""
  if target.platform == 'gpu':
    return dict(xla_gpu_enable_triton_gemm=False, xla_gpu_autotune_level=0)
  return {}


def compile_only() -> None:
  """Makes this process one that compiles for chips it does not own; call it before jax
  first runs anything. Its own backend is the CPU (on a TPU VM or a GPU host it leaves the
  chips alone, and the CUDA plugin does not start, which it could not without a GPU);
  a second process that loads libtpu (a test worker, another plan) does not stop on
  libtpu's lockfile; the CUDA plugin's version check, which calls cuInit, is skipped."""
  jax.config.update('jax_platforms', 'cpu')
  os.environ.update(ALLOW_MULTIPLE_LIBTPU_LOAD='1', JAX_SKIP_CUDA_CONSTRAINTS_CHECK='1')


@functools.cache
def _topology(target):
  if target.platform == 'gpu':
    return _gpu_topology(target)
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')  # as compile_only
  if importlib.util.find_spec('libtpu') is None:
    raise errors.UserError(f'planning for {target.name} compiles for a TPU and needs libtpu: '
                           "pip install 'jax[tpu]' (it runs without a TPU)")
  return topologies.get_topology_desc(target.topology, 'tpu', **dict(target.topology_args))


def gpu_plugin_installed() -> bool:
  return (importlib.util.find_spec('jax_plugins') is not None
          and importlib.util.find_spec('jax_plugins.xla_cuda13') is not None)


def _gpu_topology(target):
  if not gpu_plugin_installed():
    raise errors.UserError(
        f'planning for {target.name} compiles for a GPU and needs jax\'s CUDA plugin: '
        "pip install 'jax[cuda13]' (it runs without a GPU)")
  os.environ.setdefault('JAX_SKIP_CUDA_CONSTRAINTS_CHECK', '1')  # as compile_only
  with open(os.path.join(_SPECS, target.gpu_spec)) as f:
    spec = f.read()
  try:
    return topologies.get_topology_desc(platform='cuda', target_config=spec,
                                        topology=target.topology)
  except NotImplementedError as e:  # the plugin failed to start with jax's backends
    raise errors.UserError(
        f'planning for {target.name}: jax\'s CUDA plugin did not start in this process '
        '(without a GPU it needs JAX_PLATFORMS=cpu or chips.compile_only() before jax '
        'runs anything)') from e
