"""Convolutions in two formulations, chosen per backend.

XLA's CPU grouped convolution is 15-28x slower than a sum of shifted multiplies for
a 3x3 depthwise conv (benchmarks/RESULTS.md, "Where TinyViT's train step goes"), while
on GPU (cuDNN) and TPU the built-in convolution is the fast path. So every conv here has
two implementations:

* ``'xla'``: ``lax.conv_general_dilated`` (``feature_group_count`` for depthwise).
* ``'shifts'``: depthwise as k*k shifted multiply-adds, 1x1 convs as a matmul (both
  with hand-written VJPs) and the stem's dense convs as im2col + matmul. Built for the
  CPU, where it trains TinyViT several times faster (benchmarks/RESULTS.md).

``'auto'`` picks ``'shifts'`` for a CPU and ``'xla'`` elsewhere: the platform compiled for
(``tinyvit_jax.target``), which a plan sets to the TPU it compiles for. Both are kept
under the timm parity tests. Layout is NHWC; kernels are HWIO (depthwise: ``(k, k, 1, C)``).

The switch, one for every model (as ``attention``'s): the environment variable
``TINYVIT_JAX_CONV`` read at import, or ``set_conv_impl(name)`` / ``with conv_impl(name):``.
It is read when a function is traced, so set it before ``jax.jit`` first compiles the
model. ``macs`` counts a model under ``'xla'``, so the count is the same under both.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax

from tinyvit_jax import target
from tinyvit_jax.models import switch

ENV = 'TINYVIT_JAX_CONV'
IMPLS = ('auto', 'xla', 'shifts')
_SWITCH = switch.Switch('conv_impl', ENV, IMPLS)
get_conv_impl, set_conv_impl, conv_impl = _SWITCH.get, _SWITCH.set, _SWITCH.using


def resolve_conv_impl(impl: str | None = None) -> str:
  """'xla' or 'shifts': ``impl`` (by default the switch's), 'auto' by the target platform."""
  impl = _SWITCH.get() if impl is None else _SWITCH.check(impl)
  if impl == 'auto':
    return 'shifts' if target.current().platform == 'cpu' else 'xla'
  return impl


def _out_size(size: int, k: int, stride: int, pad: int) -> int:
  return (size + 2 * pad - k) // stride + 1


def _shifted_views(x, k: int, stride: int, pad: int):
  """Yields ((i, j), view) where view[b, y, x] = x_padded[b, y*stride + i, x*stride + j]."""
  _, h, w, _ = x.shape
  ho, wo = _out_size(h, k, stride, pad), _out_size(w, k, stride, pad)
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x
  for i in range(k):
    for j in range(k):
      yield (i, j), lax.slice(xp, (0, i, j, 0),
                              (xp.shape[0], i + stride * (ho - 1) + 1, j + stride *
                               (wo - 1) + 1, xp.shape[3]), (1, stride, stride, 1))


def _shift_sum(x, kernel, stride: int, pad: int):
  """sum_ij view_ij(x) * kernel[i, j]: one fused loop over the output."""
  out = None
  for (i, j), view in _shifted_views(x, kernel.shape[0], stride, pad):
    term = view * kernel[i, j, 0]
    out = term if out is None else out + term
  return out


# Batch chunk of the weight gradient: its 9 reductions then read their shifted views
# from cache instead of memory (2-3x faster than one pass over the batch).
_DW_GRAD_CHUNK_BYTES = 8 << 20


def _largest_divisor_at_most(n: int, limit: int) -> int:
  return max(d for d in range(1, n + 1) if n % d == 0 and d <= max(limit, 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_shifts(x, kernel, stride: int, pad: int):
  """Depthwise conv as a sum of k*k shifted multiplies; kernel is (k, k, 1, C).

  The barrier keeps XLA from fusing the producer of ``x`` (BN, GELU) into the k*k
  reads, which would recompute it k*k times. The VJP is written by hand: autodiff of
  the slices gives k*k separate pads of the cotangent and k*k full-size reductions.
  """
  return _shift_sum(lax.optimization_barrier(x), kernel, stride, pad)


def _depthwise_shifts_fwd(x, kernel, stride, pad):
  return _depthwise_shifts(x, kernel, stride, pad), (x, kernel)


def _depthwise_shifts_bwd(stride, pad, residuals, g):
  x, kernel = residuals
  k = kernel.shape[0]
  b, h, w, c = x.shape
  ho, wo = g.shape[1], g.shape[2]
  # dx: correlate the stride-dilated cotangent with the flipped kernel.
  lo = k - 1 - pad
  g_dilated = lax.pad(g, jnp.zeros((), g.dtype),
                      ((0, 0, 0), (lo, h - 1 + pad - stride *
                                   (ho - 1), stride - 1), (lo, w - 1 + pad - stride *
                                                           (wo - 1), stride - 1), (0, 0, 0)))
  dx = _shift_sum(g_dilated, kernel[::-1, ::-1], 1, 0)
  # dkernel[i, j] = sum over batch and space of view_ij(x) * g, chunked over the batch.
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  chunk = _largest_divisor_at_most(b, _DW_GRAD_CHUNK_BYTES // (xp[0].size * xp.dtype.itemsize))
  xp = xp.reshape(b // chunk, chunk, *xp.shape[1:])
  gc = g.reshape(b // chunk, chunk, *g.shape[1:])

  def chunk_grad(args):
    x_chunk, g_chunk = args
    return jnp.stack([
        jnp.sum(view * g_chunk, axis=(0, 1, 2))
        for _, view in _shifted_views(x_chunk, k, stride, 0)
    ])

  dkernel = jnp.sum(lax.map(chunk_grad, (xp, gc)), axis=0).reshape(k, k, 1, c)
  return dx, dkernel.astype(kernel.dtype)


_depthwise_shifts.defvjp(_depthwise_shifts_fwd, _depthwise_shifts_bwd)


@jax.custom_vjp
def _matmul_last_axis(x, w):
  """x @ w over x's last axis, with a weight gradient that transposes the input.

  Autodiff of the dot lets XLA's CPU backend transpose the output-side gradient to
  (Cout, N) before the weight-gradient matmul, which costs more than the matmul
  when Cout > Cin (the MBConv expansion); transposing the (N, Cin) input is cheaper.
  """
  return jnp.dot(x, w)


def _matmul_last_axis_fwd(x, w):
  return jnp.dot(x, w), (x, w)


def _matmul_last_axis_bwd(residuals, g):
  x, w = residuals
  x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  return jnp.dot(g, w.T), jnp.dot(x2.T, g2).astype(w.dtype)


_matmul_last_axis.defvjp(_matmul_last_axis_fwd, _matmul_last_axis_bwd)


def _dense_shifts(x, kernel, stride: int, pad: int):
  """Dense conv as im2col (concatenated shifted views) and one matmul."""
  k, _, cin, cout = kernel.shape
  if k == 1 and stride == 1 and pad == 0:
    return _matmul_last_axis(x, kernel.reshape(cin, cout))
  cols = jnp.concatenate([v for _, v in _shifted_views(x, k, stride, pad)], axis=-1)
  return jnp.dot(cols, kernel.reshape(k * k * cin, cout))


def _xla_conv(x, kernel, stride: int, pad: int, groups: int):
  return lax.conv_general_dilated(x, kernel, window_strides=(stride, stride),
                                  padding=((pad, pad), (pad, pad)),
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                  feature_group_count=groups)


def conv2d(x, kernel, *, stride: int = 1, pad: int = 0, groups: int = 1, impl: str | None = None):
  """NHWC conv without bias; ``groups`` divides the channels. ``impl``: a formulation for
  this conv alone, by default the switch's. Convs neither dense (``groups=1``) nor
  depthwise (the channel count), such as RegNet's, have one formulation: XLA's."""
  impl = resolve_conv_impl(impl)
  if x.shape[-1] % groups:
    raise ValueError(f'groups={groups} does not divide the {x.shape[-1]} input channels.')
  if impl == 'xla' or groups not in (1, x.shape[-1]):
    return _xla_conv(x, kernel, stride, pad, groups)
  if groups == 1:
    return _dense_shifts(x, kernel, stride, pad)
  return _depthwise_shifts(x, kernel, stride, pad)
