"""Convolutions in two formulations, chosen per backend.

XLA's CPU grouped convolution is 15-28x slower than a sum of shifted multiplies for
a 3x3 depthwise conv (see shared/reference/facts.md), while on GPU (cuDNN) and TPU the
built-in convolution is the fast path. So every conv here has two implementations:

* ``'xla'``: ``lax.conv_general_dilated`` (``feature_group_count`` for depthwise).
* ``'shifts'``: depthwise as k*k shifted multiply-adds, dense convs as im2col + dot and
  1x1 convs as a plain dot. Built for the CPU.

``'auto'`` picks ``'shifts'`` on CPU and ``'xla'`` elsewhere. Both are kept under the
timm parity tests. Layout is NHWC; kernels are HWIO (depthwise: ``(k, k, 1, C)``).
"""
import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ('auto', 'xla', 'shifts')


def resolve_conv_impl(conv_impl: str) -> str:
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f'conv_impl={conv_impl!r}; expected one of {CONV_IMPLS}.')
  if conv_impl == 'auto':
    return 'shifts' if jax.default_backend() == 'cpu' else 'xla'
  return conv_impl


def _out_size(size: int, k: int, stride: int, pad: int) -> int:
  return (size + 2 * pad - k) // stride + 1


def _shifted_views(x, k: int, stride: int, pad: int):
  """Yields ((i, j), view) where view[b, y, x] = x_padded[b, y*stride + i, x*stride + j]."""
  _, h, w, _ = x.shape
  ho, wo = _out_size(h, k, stride, pad), _out_size(w, k, stride, pad)
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x
  for i in range(k):
    for j in range(k):
      yield (i, j), lax.slice(
          xp, (0, i, j, 0),
          (xp.shape[0], i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, xp.shape[3]),
          (1, stride, stride, 1))


def _depthwise_shifts(x, kernel, stride: int, pad: int):
  """Depthwise conv as a sum of k*k shifted multiplies; kernel is (k, k, 1, C)."""
  k = kernel.shape[0]
  out = None
  for (i, j), view in _shifted_views(x, k, stride, pad):
    term = view * kernel[i, j, 0]
    out = term if out is None else out + term
  return out


def _dense_shifts(x, kernel, stride: int, pad: int):
  """Dense conv as im2col (concatenated shifted views) and one matmul."""
  k, _, cin, cout = kernel.shape
  if k == 1 and stride == 1 and pad == 0:
    return jnp.dot(x, kernel.reshape(cin, cout))
  cols = jnp.concatenate([v for _, v in _shifted_views(x, k, stride, pad)], axis=-1)
  return jnp.dot(cols, kernel.reshape(k * k * cin, cout))


def _xla_conv(x, kernel, stride: int, pad: int, groups: int):
  return lax.conv_general_dilated(
      x, kernel, window_strides=(stride, stride), padding=((pad, pad), (pad, pad)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)


def conv2d(x, kernel, *, stride: int = 1, pad: int = 0, groups: int = 1, impl: str = 'auto'):
  """NHWC conv without bias. ``groups`` is 1 (dense) or the channel count (depthwise)."""
  impl = resolve_conv_impl(impl)
  if groups not in (1, x.shape[-1]):
    raise ValueError(f'groups={groups}: only dense (1) or depthwise ({x.shape[-1]}) convs.')
  if impl == 'xla':
    return _xla_conv(x, kernel, stride, pad, groups)
  if groups == 1:
    return _dense_shifts(x, kernel, stride, pad)
  return _depthwise_shifts(x, kernel, stride, pad)
