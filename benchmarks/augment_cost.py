"""What XLA:TPU's cost model charges the device augmentation, per image, in both
formulations: the gathers a CPU or GPU runs, and the compares and one-hot matmuls a TPU
runs (``tinyvit_jax/data/augment/gather_free.py``). Compiled for one chip of the slice on
this machine (libtpu, no TPU): figures are XLA's counts, modelled, not measured.

  python benchmarks/augment_cost.py --config=configs/fpd_21k.py:variant=5m --plan=v6e-8
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # plans need no device: keep libtpu quiet

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

from tinyvit_jax import chips  # pylint: disable=wrong-import-position
from tinyvit_jax import target  # pylint: disable=wrong-import-position
from tinyvit_jax import writes  # pylint: disable=wrong-import-position
from tinyvit_jax.data import augment  # pylint: disable=wrong-import-position
from tinyvit_jax.data.augment import uint8_ops  # pylint: disable=wrong-import-position
from tinyvit_jax.train import config as config_lib  # pylint: disable=wrong-import-position


def programs(config, size: int):
  """name -> (a function of a batch, the shapes and dtypes of one image's arguments)."""
  image = ((size, size, 3), jnp.uint8)
  device = augment.make_train_augment(config.aug).device
  warp = lambda i, m: uint8_ops.affine(i, tuple(m[k] for k in range(6)), (124, 116, 104))
  return {
      'device augmentation': (lambda i, k: device(i, k, None)[0], (image, ((2,), jnp.uint32))),
      'warp': (jax.vmap(warp), (image, ((6,), jnp.float32))),  # a drawn matrix
      'histograms': (jax.vmap(uint8_ops._histograms), (image,)),
      'lookup table': (jax.vmap(uint8_ops.apply_lut), (image, ((3, 256), jnp.uint8))),
  }


def cost(fn, shapes, slice_, batch: int, gather_free: bool) -> dict:
  mesh = jax.sharding.Mesh(chips.devices(slice_)[:1], ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  args = [
      jax.ShapeDtypeStruct((batch,) + shape, dtype, sharding=sharding) for shape, dtype in shapes
  ]
  with target.compiling_for(target.Target('tpu' if gather_free else 'cpu')):
    started = time.time()
    compiled = jax.jit(lambda *a: fn(*a)).lower(*args).compile(
        compiler_options=chips.compiler_options(slice_))
  counts = compiled.cost_analysis()
  counts = counts[0] if isinstance(counts, (list, tuple)) else counts
  return dict(gflop=counts.get('flops', 0) / batch / 1e9,
              gb_accessed=counts.get('bytes accessed', 0) / batch / 1e9,
              temp_mb=compiled.memory_analysis().temp_size_in_bytes / batch / 1e6,
              compile_seconds=time.time() - started)


def main_(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/fpd_21k.py:variant=5m')
  parser.add_argument('--plan', default='v6e-8', help='the slice; one chip of it is compiled for')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--out', default='benchmarks/out/augment_cost.json')
  args = parser.parse_args(argv)
  path, _, arg = args.config.partition(':')
  config = config_lib.load_recipe(path).get_config(arg)
  slice_ = chips.parse(args.plan)
  rows = []
  for name, (fn, shapes) in programs(config, config.aug.image_size).items():
    for gather_free in (False, True):
      row = dict(program=name, formulation='gather-free (TPU)' if gather_free else 'gathers',
                 **cost(fn, shapes, slice_, args.batch, gather_free))
      rows.append(row)
      print(json.dumps(row), flush=True)
  writes.write_json(
      args.out,
      dict(config=args.config, chip=slice_.name, batch=args.batch,
           machine='Intel Xeon (AVX-512), 2 cores', rows=rows), move='--out')


if __name__ == '__main__':
  main_(sys.argv[1:])
