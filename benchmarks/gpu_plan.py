"""benchmarks/models.py's train step compiled for an H100/H200 on a machine without one,
held against the step's measured H200 figure (benchmarks/RESULTS.md).

  pip install 'jax[cuda13]'   # the CUDA plugin; it needs no GPU
  python benchmarks/gpu_plan.py --models deit_small_distilled_patch16_224 --batch 256

The step is models.py's own (AdamW, softmax CE, bf16 compute, float32 params, the state
donated), built on abstract state, compiled through ``chips.devices`` with Triton GEMMs
and autotuning off (``chips.compiler_options``): memory is indicative. XLA:GPU gives no
cost analysis, so the modelled step is the compute roofline alone:
3 x 2 x count_macs x batch flops at the chip's dense bf16 peak. Modelled, not measured.
"""
import argparse
import json
import os
import sys
import time

from tinyvit_jax import chips

chips.compile_only()  # before jax starts: the CUDA plugin compiles without a GPU

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models as bench  # pylint: disable=g-import-not-at-top,wrong-import-position
from tinyvit_jax.models import create_model  # pylint: disable=g-import-not-at-top
from tinyvit_jax.models.macs import count_macs  # pylint: disable=g-import-not-at-top

GiB = 2**30


def plan(name: str, accelerator: str, batch: int) -> dict:
  target = chips.parse(accelerator)
  mesh = Mesh(np.array(chips.devices(target)), ('data',))
  build = lambda: create_model(name, num_classes=1000, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
  model = nnx.eval_shape(build)
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adamw(1e-3, weight_decay=0.05)
  leaves, treedef = jax.tree.flatten((params, rest, jax.eval_shape(tx.init, params)))
  place = lambda shape, dtype, spec: jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(
      mesh, spec))
  leaves = [place(leaf.shape, leaf.dtype, P()) for leaf in leaves]
  size = bench.model_info(name).input_size
  images = place((batch, size, size, 3), jnp.float32, P('data'))
  labels = place((batch,), jnp.int32, P('data'))
  started = time.time()
  compiled = bench.make_train_step(graphdef, tx, treedef).lower(
      leaves, images, labels).compile(compiler_options=chips.compiler_options(target))
  seconds = time.time() - started
  memory = compiled.memory_analysis()
  macs = count_macs(build(), size)
  flops = 3 * 2 * macs * batch
  step = flops / target.peak_flops
  return dict(model=name, accelerator=target.name, device=mesh.devices.flat[0].device_kind,
              batch=batch, compile_seconds=round(seconds, 1),
              argument_gib=memory.argument_size_in_bytes / GiB,
              temp_gib=memory.temp_size_in_bytes / GiB,
              output_gib=memory.output_size_in_bytes / GiB, gmacs_per_image=macs / 1e9,
              train_tflop_per_step=flops / 1e12, modelled_step_ms=step * 1e3,
              modelled_images_per_second=batch / step)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', default='deit_small_distilled_patch16_224')
  parser.add_argument('--accelerators', default='h100,h200')
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--json', help='also write the rows here')
  args = parser.parse_args()
  rows = [
      plan(name, accelerator, args.batch)
      for name in args.models.split(',')
      for accelerator in args.accelerators.split(',')
  ]
  for row in rows:
    print(json.dumps(row))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=1)


if __name__ == '__main__':
  main()
