"""Building blocks shared by the model files.

Attribute names follow timm's module names (``conv``, ``bn``, ``fc1``...) so that a flat
NNX state path such as ``stages.1.blocks.0.attn.qkv.kernel`` maps onto the timm key
``stages.1.blocks.0.attn.qkv.weight`` by renaming the leaf alone (see ``timm_weights.py``).
"""
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from tinyvit_jax.models import conv_ops

# The state that makes up a model's weights: parameters and BatchNorm statistics.
WEIGHTS = (nnx.Param, nnx.BatchStat)

# timm's trunc_normal_(std=.02) cuts at +-2 in absolute value, i.e. at +-100 std: in
# effect N(0, 0.02^2). jax's bounds are in units of std, hence +-100.
trunc_normal_02 = nnx.initializers.truncated_normal(stddev=0.02, lower=-100.0, upper=100.0)


def gelu(x):
  """Exact (erf) GELU, as timm's nn.GELU; the tanh form breaks parity."""
  return jax.nn.gelu(x, approximate=False)


def quick_gelu(x):
  """OpenAI CLIP's activation, x * sigmoid(1.702 x): its weights were trained with it."""
  return x * jax.nn.sigmoid(1.702 * x)


def linear(din: int, dout: int, *, rngs: nnx.Rngs, dtype=None, use_bias: bool = True):
  """A Linear initialised as in timm/DeiT: truncated normal(0.02) weight, zero bias."""
  return nnx.Linear(din, dout, use_bias=use_bias, kernel_init=trunc_normal_02,
                    bias_init=nnx.initializers.zeros_init(), dtype=dtype, param_dtype=jnp.float32,
                    rngs=rngs)


def layer_norm(dim: int, *, eps: float, rngs: nnx.Rngs, dtype=None):
  return nnx.LayerNorm(dim, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def conv_kernel_init(key, shape):
  """timm leaves convs at torch's default init, kaiming_uniform(a=sqrt(5)), which is
  uniform(+-1/sqrt(fan_in)). ``shape`` is HWIO."""
  bound = 1.0 / (shape[0] * shape[1] * shape[2])**0.5
  return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


class BatchNorm(nnx.Module):
  """BatchNorm with PyTorch's semantics, so timm statistics carry over exactly.

  Batch statistics are computed in float32 over every axis but the last; under a
  sharded jit that is the global batch. The running variance is updated with the
  unbiased batch variance, as torch does (flax's BatchNorm uses the biased one).
  """

  def __init__(self, num_features: int, *, momentum: float = 0.1, eps: float = 1e-5,
               scale_init: float = 1.0, use_running_average: bool = False):
    self.scale = nnx.Param(jnp.full((num_features,), scale_init, jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.momentum = momentum
    self.eps = eps
    self.use_running_average = use_running_average

  def __call__(self, x):
    dtype = x.dtype
    xf = x.astype(jnp.float32)
    if self.use_running_average:
      mean, var = self.mean[...], self.var[...]
    else:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(xf, axis=axes)
      var = jnp.mean(jnp.square(xf - mean), axis=axes)
      n = x.size // x.shape[-1]
      unbiased = var * (n / max(n - 1, 1))
      m = self.momentum
      self.mean[...] = (1 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
      self.var[...] = (1 - m) * self.var[...] + m * jax.lax.stop_gradient(unbiased)
    mul = self.scale[...] * jax.lax.rsqrt(var + self.eps)
    return (xf * mul + (self.bias[...] - mean * mul)).astype(dtype)


class ConvNorm(nnx.Module):
  """Bias-free conv followed by BatchNorm (timm's ``ConvNorm``, Cream's ``Conv2d_BN``)."""

  def __init__(self, cin: int, cout: int, *, k: int = 1, stride: int = 1, pad: int = 0,
               groups: int = 1, bn_weight_init: float = 1.0, dtype=None, rngs: nnx.Rngs):
    self.conv = Conv(cin, cout, k, stride=stride, pad=pad, groups=groups, dtype=dtype, rngs=rngs)
    self.bn = BatchNorm(cout, scale_init=bn_weight_init)

  def __call__(self, x):
    return self.bn(self.conv(x))


class Conv(nnx.Module):
  """A bias-free NHWC conv with an HWIO ``kernel`` (timm's ``weight``), any groups, in the
  formulation of ``conv_ops``' switch, or in ``impl`` when a model fixes one."""

  def __init__(self, cin: int, cout: int, k: int = 1, *, stride: int = 1, pad: int = 0,
               groups: int = 1, kernel_init: Callable = conv_kernel_init, impl: str | None = None,
               dtype=None, rngs: nnx.Rngs):
    self.kernel = nnx.Param(kernel_init(rngs.params(), (k, k, cin // groups, cout)))
    self.stride, self.pad, self.groups = stride, pad, groups
    self.impl = impl
    self.dtype = dtype

  def __call__(self, x):
    kernel = self.kernel[...]
    if self.dtype is not None:
      x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    return conv_ops.conv2d(x, kernel, stride=self.stride, pad=self.pad, groups=self.groups,
                           impl=self.impl)


class DropPath(nnx.Module):
  """Stochastic depth: drops the whole residual branch per sample, scales the rest."""

  def __init__(self, rate: float, *, rngs: nnx.Rngs):
    self.rate = rate
    self.deterministic = False
    self.rngs = rngs['dropout'].fork() if rate > 0 else nnx.data(None)

  def __call__(self, x):
    if self.deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.rngs(), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    # A per-sample scale fuses into the residual add; a select on a broadcast mask
    # made XLA:CPU write the branch out once more (40% of an 11M train step).
    return x * (mask / keep).astype(x.dtype)


def drop_path_rates(rate: float, depth: int) -> list[float]:
  """Linearly increasing rates over all blocks, as timm's calculate_drop_path_rates."""
  if depth == 1:
    return [0.0]
  return [rate * i / (depth - 1) for i in range(depth)]
