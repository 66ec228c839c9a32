"""The compile time of a TinyViT train step for a TPU slice, on a machine without one, and
the model variants that locate it (benchmarks/RESULTS.md, "Compiling for a TPU").

  TINYVIT_JAX_CONV=xla TINYVIT_JAX_ATTENTION=xla python benchmarks/tpu_compile_time.py \
      --img 64 --per-chip 8 [--depths 2,2,0,0] [--variant no-attention]

The step: forward, softmax CE, grad, SGD with momentum, bf16 compute, the state replicated
and the batch split over the slice (``--variant forward``: forward and loss alone). The
other variants change the model only to see what its parts cost: ``no-attention``
(``attend`` returns v), ``no-bias`` (attention without its bias), ``no-local-conv``
(TinyViT blocks without their depthwise conv). Prints the compile's wall and CPU seconds
(``time.process_time``: every compiler thread, steadier than wall time on a shared
machine), the StableHLO's lines and XLA's flops per chip.
"""
import argparse
import time

from tinyvit_jax import chips

chips.compile_only()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tinyvit_jax.models import create_model  # pylint: disable=g-import-not-at-top
from tinyvit_jax.models import tiny_vit  # pylint: disable=g-import-not-at-top


def _without_local_conv(self, x):
  b, h, w, _ = x.shape
  ws = self.window_size
  attn = tiny_vit.window_reverse(self.attn(tiny_vit.window_partition(x, ws)), ws, b, h, w)
  x = x + self.drop_path1(attn)
  return x + self.drop_path2(self.mlp(x))


def apply_variant(variant: str) -> None:
  attend = tiny_vit.attend
  if variant == 'no-attention':
    tiny_vit.attend = lambda q, k, v, bias: v
  elif variant == 'no-bias':
    tiny_vit.attend = lambda q, k, v, bias: attend(q, k, v, None)
  elif variant == 'no-local-conv':
    tiny_vit.TinyVitBlock.__call__ = _without_local_conv


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='tiny_vit_5m_224')
  parser.add_argument('--target', default='v5e:2x2')
  parser.add_argument('--img', type=int, default=64)
  parser.add_argument('--per-chip', type=int, default=8)
  parser.add_argument('--depths', help='e.g. 2,2,0,0 (TinyViT)')
  parser.add_argument('--variant', default='train',
                      choices=('train', 'forward', 'no-attention', 'no-bias', 'no-local-conv'))
  args = parser.parse_args()
  apply_variant(args.variant)
  devices = chips.devices(chips.parse(args.target))
  mesh = Mesh(np.array(devices), ('data',))
  overrides = dict(depths=tuple(map(int, args.depths.split(',')))) if args.depths else {}
  model = nnx.eval_shape(lambda: create_model(args.model, num_classes=1000, img_size=args.img, dtype
                                              =jnp.bfloat16, rngs=nnx.Rngs(0), **overrides))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.sgd(0.1, momentum=0.9)
  place = lambda tree, spec: jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, spec)), tree)
  state = place((params, rest, jax.eval_shape(tx.init, params)), P())
  batch = args.per_chip * len(devices)
  images = place(jax.ShapeDtypeStruct((batch, args.img, args.img, 3), jnp.bfloat16), P('data'))
  labels = place(jax.ShapeDtypeStruct((batch,), jnp.int32), P('data'))

  def step(state, images, labels):
    params, rest, opt_state = state

    def loss_fn(params):
      model = nnx.merge(graphdef, params, rest, copy=True)
      logits = model(images).astype(jnp.float32)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, nnx.split(model, nnx.Param, ...)[2]

    if args.variant == 'forward':
      loss, rest = loss_fn(params)
      return (params, rest, opt_state), loss
    (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), rest, opt_state), loss

  lowered = jax.jit(step, donate_argnums=0).lower(state, images, labels)
  wall, cpu = time.time(), time.process_time()
  compiled = lowered.compile()
  wall, cpu = time.time() - wall, time.process_time() - cpu
  print(f'{args.model} {args.variant} depths={args.depths or "default"} {args.img} px '
        f'{args.per_chip}/chip on {args.target}: compile {wall:.1f} s wall, {cpu:.1f} s CPU; '
        f'StableHLO {lowered.as_text().count(chr(10)):,} lines; '
        f'{compiled.cost_analysis()["flops"] / 1e9:.2f} GFLOP per chip')


if __name__ == '__main__':
  main()
