"""Multiply-accumulates of a forward pass, counted the way the papers count them.

The TinyViT/DeiT tables (fvcore) count the MACs of convolutions and matrix products
only. XLA's ``cost_analysis()`` also counts every elementwise op (GELU, LayerNorm,
softmax, BN), which adds 5-15% on these models; ``xla_flops`` returns that figure for
comparison. The count traces every conv and attention as the paper writes them (XLA's
convolution, attention as matmuls), so it does not depend on the formulation a backend
runs (``conv_ops``, ``attention``): the CPU's depthwise as shifted multiplies has no
convolution to count.
"""
import math

import jax
import jax.numpy as jnp
from flax import nnx

from tinyvit_jax.models import attention
from tinyvit_jax.models import conv_ops


def _eqn_macs(eqn) -> int:
  if eqn.primitive.name == 'dot_general':
    (contract_lhs, _), _ = eqn.params['dimension_numbers']
    lhs_shape = eqn.invars[0].aval.shape
    return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs_shape[d] for d in contract_lhs)
  if eqn.primitive.name == 'conv_general_dilated':
    rhs_spec = eqn.params['dimension_numbers'].rhs_spec  # (out, in, *spatial) positions
    kernel = eqn.invars[1].aval.shape
    per_output = kernel[rhs_spec[1]] * math.prod(kernel[d] for d in rhs_spec[2:])
    return math.prod(eqn.outvars[0].aval.shape) * per_output
  return 0


def _jaxpr_macs(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    total += _eqn_macs(eqn)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else (param,):
        inner = getattr(sub, 'jaxpr', None)
        if inner is not None:
          total += _jaxpr_macs(getattr(inner, 'jaxpr', inner))
  return total


def _forward_fn(model: nnx.Module):
  graphdef, state = nnx.split(model)
  return (lambda s, x: nnx.merge(graphdef, s)(x)), state


def count_macs(model: nnx.Module, img_size: int, batch: int = 1) -> int:
  """MACs of convs and matmuls in one forward pass of ``batch`` images."""
  fn, state = _forward_fn(model)
  images = jax.ShapeDtypeStruct((batch, img_size, img_size, 3), jnp.float32)
  with conv_ops.conv_impl('xla'), attention.attention_impl('einsum'):
    return _jaxpr_macs(jax.make_jaxpr(fn)(state, images).jaxpr)


def xla_flops(model: nnx.Module, img_size: int, batch: int = 1) -> float:
  """XLA's own flop count of the compiled forward, elementwise ops included."""
  fn, state = _forward_fn(model)
  images = jax.ShapeDtypeStruct((batch, img_size, img_size, 3), jnp.float32)
  return float(jax.jit(fn).lower(state, images).compile().cost_analysis()['flops'])
