"""chips: the accelerator names users type, against Cloud TPU's published slice shapes."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tinyvit_jax import chips, errors

# Cloud TPU's documentation, per accelerator type: chips, hosts (VMs), the topology.
PUBLISHED = {
    'v2-8': (4, 1, '2x2'),
    'v3-8': (4, 1, '2x2'),
    'v4-8': (4, 1, '2x2x1'),
    'v4-16': (8, 2, '2x2x2'),
    'v4-32': (16, 4, '2x2x4'),
    'v4-64': (32, 8, '2x4x4'),
    'v4-128': (64, 16, '4x4x4'),
    'v4-256': (128, 32, '4x4x8'),
    'v4-512': (256, 64, '4x8x8'),
    'v4-1024': (512, 128, '8x8x8'),
    'v4-4096': (2048, 512, '8x16x16'),
    'v5litepod-1': (1, 1, '1x1'),
    'v5litepod-4': (4, 1, '2x2'),
    'v5litepod-8': (8, 1, '2x4'),
    'v5litepod-16': (16, 4, '4x4'),
    'v5litepod-32': (32, 8, '4x8'),
    'v5litepod-64': (64, 16, '8x8'),
    'v5litepod-128': (128, 32, '8x16'),
    'v5litepod-256': (256, 64, '16x16'),
    'v5p-8': (4, 1, '2x2x1'),
    'v5p-16': (8, 2, '2x2x2'),
    'v5p-32': (16, 4, '2x2x4'),
    'v5p-128': (64, 16, '4x4x4'),
    'v6e-1': (1, 1, '1x1'),
    'v6e-4': (4, 1, '2x2'),
    'v6e-8': (8, 1, '2x4'),
    'v6e-16': (16, 4, '4x4'),
    'v6e-64': (64, 16, '8x8'),
    'v6e-256': (256, 64, '16x16'),
}
# Per chip: HBM GiB, bf16 TFLOP/s, HBM TB/s.
SPECS = {
    'v2': (16, 45, 0.7),
    'v3': (32, 123, 0.9),
    'v4': (32, 275, 1.2),
    'v5litepod': (16, 197, 0.82),
    'v5p': (95, 459, 2.76),
    'v6e': (32, 918, 1.64)
}


@pytest.mark.parametrize('name', sorted(PUBLISHED))
def test_published_slices(name):
  chips_, hosts, shape = PUBLISHED[name]
  family = name.rsplit('-', 1)[0]
  t = chips.parse(name)
  assert (t.name, t.chips, t.hosts, t.topology.split(':')[1]) == (name, chips_, hosts, shape)
  per_device = 2 if family in ('v2', 'v3') else 1
  assert t.devices == chips_ * per_device
  hbm, tflops, tbs = SPECS[family]
  assert t.hbm_bytes * per_device == hbm * 2**30
  assert t.peak_flops * per_device == pytest.approx(tflops * 1e12)
  assert t.hbm_bandwidth * per_device == pytest.approx(tbs * 1e12)


TPUS = [name for name in chips.known() if chips.parse(name).platform == 'tpu']


@given(st.sampled_from(TPUS))
def test_every_spelling_names_the_same_target(name):
  t = chips.parse(name)
  assert chips.parse(t.topology) == t
  family, count = name.rsplit('-', 1)
  counts_cores = family in ('v2', 'v3', 'v4', 'v5p')
  assert int(count) == t.chips * (2 if counts_cores else 1)
  assert t.hosts * t.chips_per_host == t.chips
  if family == 'v5litepod':
    assert chips.parse('v5e-' + count) == t  # Colab's spelling


@settings(max_examples=40)
@given(
    st.one_of(
        st.sampled_from([
            'v4-4', 'v4-12', 'v5litepod-2', 'v6e-512', 'v5e:3x3', 'v7-8', 'h100x', '', 'v5p-8 ',
            'V4-8'
        ]),
        st.text(max_size=12).filter(lambda s: s not in chips.known())))
def test_unknown_names_are_refused_in_one_line(name):
  try:
    chips.parse(name)
  except chips.UnknownAccelerator as e:
    assert isinstance(e, errors.UserError)
    message = str(e)
    assert '\n' not in message and repr(name) in message
    for form in ('v4-8', 'v5litepod-', 'v5p-8', 'v6e-', "'v5e:2x2'"):
      assert form in message
  else:  # only libtpu's own spellings of known slices get through
    assert chips.parse(name).topology in (name, name[:-2])


@pytest.mark.parametrize('name, processes', [('v4-32', 4), ('v5litepod-8', 1)])
def test_one_process_gets_the_whole_slice(name, processes):
  t = chips.parse(name)
  devices = chips.devices(t)
  assert len(devices) == t.devices
  assert len({d.process_index for d in devices}) == processes == t.hosts
  assert {d.platform for d in devices} == {'tpu'}


def test_a_multi_host_mesh_compiles():
  devices = chips.devices(chips.parse('v4-32'))
  assert devices[0].device_kind == 'TPU v4'
  mesh = Mesh(np.array(devices), ('data',))
  x = jax.ShapeDtypeStruct((64, 128), jnp.bfloat16, sharding=NamedSharding(mesh, P('data')))
  w = jax.ShapeDtypeStruct((128, 128), jnp.bfloat16, sharding=NamedSharding(mesh, P()))
  step = jax.jit(jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w))))
  compiled = step.lower(w, x).compile()
  assert compiled.cost_analysis()['flops'] > 2 * 4 * 128 * 128  # per chip: its 4 rows
  assert compiled.memory_analysis().argument_size_in_bytes == (4 + 128) * 128 * 2


@pytest.mark.parametrize('name', ['v5litepod-16', 'v4-32'])
def test_a_program_each_host_runs_alone_compiles_for_one_hosts_slice(name):
  """The save pass runs on each host alone: the plan compiles it for ``one_host``, a slice
  of one host's chips (libtpu aborts on a subset of the whole slice's devices)."""
  whole = chips.parse(name)
  host = chips.one_host(whole)
  assert (host.hosts, host.chips, host.hbm_bytes,
          host.peak_flops) == (1, whole.chips_per_host, whole.hbm_bytes, whole.peak_flops)
  devices = chips.devices(host)
  assert len(devices) == whole.devices // whole.hosts
  assert devices[0].device_kind == chips.devices(whole)[0].device_kind
  mesh = Mesh(np.array(devices), ('data',))
  x = jax.ShapeDtypeStruct((16, 128), jnp.bfloat16, sharding=NamedSharding(mesh, P('data')))
  compiled = jax.jit(lambda x: jnp.sum(jnp.tanh(x), axis=0)).lower(x).compile()  # an all-reduce
  assert 'all-reduce' in compiled.as_text()


@pytest.mark.parametrize('name, hbm_gb, bandwidth_tbs', [('h100', 80, 3.35), ('h200', 141, 4.8)])
def test_gpus(name, hbm_gb, bandwidth_tbs):
  t = chips.parse(name)
  assert (t.platform, t.devices, t.hosts) == ('gpu', 1, 1)
  assert t.peak_flops == 989e12  # dense bf16, H100 and H200 alike
  assert t.hbm_bandwidth == pytest.approx(bandwidth_tbs * 1e12, rel=0.01)
  # What the driver reports is a little under the card's nominal size (H100: 79.1 GiB).
  assert 0.95 * hbm_gb * 1e9 <= t.hbm_bytes <= hbm_gb * 2**30
  assert chips.compiler_options(t) and not chips.compiler_options(chips.parse('v5e:2x2'))


GPU_COMPILE = """
from tinyvit_jax import chips
chips.compile_only()
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
t = chips.parse('h100')
mesh = Mesh(np.array(chips.devices(t)), ('data',))
x = jax.ShapeDtypeStruct((256, 512), jnp.bfloat16, sharding=NamedSharding(mesh, P('data')))
step = jax.jit(jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w))))
compiled = step.lower(x.update(shape=(512, 512)), x).compile(
    compiler_options=chips.compiler_options(t))
print(mesh.devices.flat[0].device_kind, compiled.memory_analysis().argument_size_in_bytes)
"""


def test_a_gpu_compiles_without_one():
  if not chips.gpu_plugin_installed():
    with pytest.raises(errors.UserError, match=r"pip install 'jax\[cuda13\]'"):
      chips.devices(chips.parse('h100'))
    pytest.skip("jax's CUDA plugin is not installed (pip install 'jax[cuda13]')")
  out = subprocess.run([sys.executable, '-c', GPU_COMPILE], capture_output=True, text=True,
                       check=True).stdout.split('\n')[-2]
  assert out == f'NVIDIA H100 80GB HBM3 {(512 + 256) * 512 * 2}'


@pytest.mark.parametrize('name', ['v2-8', 'v3-8', 'v4-8', 'v5litepod-1', 'v5p-8', 'v6e-1'])
def test_a_runtimes_devices_name_their_target(name):
  """What a Colab (or any) runtime's jax.devices() shows maps back to the target: checked
  on libtpu's own devices for the slice."""
  t = chips.parse(name)
  devices = chips.devices(t)
  assert chips.for_devices(devices[0].device_kind, len(devices)) == t
  assert chips.for_devices('TPU v5 lite', 3) is None
