"""Scaled dot-product attention for DeiT and TinyViT, in formulations chosen per backend.

``attend(q, k, v, bias)`` is ``softmax(q kᵀ · hd^-0.5 + bias) v`` per head, as timm's
attention: the scale multiplies the scores before the bias is added, and the softmax
runs in float32 whatever the compute dtype. The formulations:

* ``'einsum'``: batched matmuls in head-major layout (B, heads, T, hd), the bias
  gradient summed over windows as a matrix-vector product. Built for XLA:CPU, where it
  is faster than ``jax.nn.dot_product_attention`` (benchmarks/RESULTS.md, "Attention").
* ``'xla'``: ``jax.nn.dot_product_attention(implementation='xla')``.
* ``'cudnn'``: ``jax.nn.dot_product_attention(implementation='cudnn')``, cuDNN's fused
  kernel, where it takes the case (``cudnn_supports``); ``'xla'`` where it does not.

``'auto'`` picks ``'einsum'`` for a CPU and ``'cudnn'`` elsewhere: the platform compiled
for (``tinyvit_jax.target``), which a plan sets to the TPU it compiles for. Every
formulation is kept under the timm parity tests.

The switch, one for every model (as timm's ``use_fused_attn``): the environment
variable ``TINYVIT_JAX_ATTENTION`` read at import, or ``set_attention_impl(name)`` /
``with attention_impl(name):``. It is read when a function is traced, so set it before
``jax.jit`` first compiles the model.
"""
import jax
import jax.numpy as jnp

from tinyvit_jax import target
from tinyvit_jax.models import switch

ENV = 'TINYVIT_JAX_ATTENTION'
IMPLS = ('auto', 'einsum', 'xla', 'cudnn')
_SWITCH = switch.Switch('attention_impl', ENV, IMPLS)
get_attention_impl, set_attention_impl, attention_impl = (_SWITCH.get, _SWITCH.set, _SWITCH.using)


def cudnn_supports(q, bias) -> bool:
  """Whether jax's cuDNN attention takes this case (its checks: check_layout and
  check_is_flash_attention in jax/_src/cudnn/fused_attention_stablehlo.py)."""
  _, t, _, hd = q.shape
  return (
      target.current().cuda and q.dtype in (jnp.bfloat16, jnp.float16) and hd % 8 == 0 and hd <= 128
      # With a bias, cuDNN's backward needs even sequence lengths; whether a
      # gradient will be taken is unknown here. TinyViT's 7x7 windows (49) fail.
      and (bias is None or t % 2 == 0))


def resolve_attention_impl(q, bias) -> str:
  """The formulation ``attend`` runs for these inputs under the current switch."""
  impl = _SWITCH.get()
  if impl == 'auto':
    impl = 'einsum' if target.current().platform == 'cpu' else 'cudnn'
  if impl == 'cudnn' and not cudnn_supports(q, bias):
    impl = 'xla'
  return impl


def attend(q, k, v, bias=None):
  """q, k, v: (B, T, heads, hd), one dtype; bias: (heads, T, T), shared by the whole
  batch (TinyViT's windows), float32. Returns (B, T, heads, hd) in v's dtype."""
  impl = resolve_attention_impl(q, bias)
  scale = q.shape[-1]**-0.5
  if impl == 'einsum':
    return _attend_einsum(q, k, v, bias, scale)
  if bias is not None:
    # cuDNN takes the bias in the inputs' dtype; XLA's adds it to float32 scores.
    bias = bias[None].astype(q.dtype if impl == 'cudnn' else bias.dtype)
  return jax.nn.dot_product_attention(q, k, v, bias, scale=scale, implementation=impl)


def _attend_einsum(q, k, v, bias, scale):
  # Head-major, both matmuls batch over leading axes: 3x faster forward on XLA:CPU than
  # einsums over (B, T, heads, hd).
  q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
  # Scores in float32 for any input dtype, scaled, then biased: XLA's form's numerics.
  scores = jnp.einsum('bhnd,bhmd->bhnm', q, k, preferred_element_type=jnp.float32) * scale
  if bias is not None:
    scores = add_window_bias(scores, bias)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum('bhnm,bhmd->bhnd', probs, v).transpose(0, 2, 1, 3)


@jax.custom_vjp
def add_window_bias(scores, bias):
  """scores (windows, heads, N, N) + bias (heads, N, N).

  The bias gradient sums over windows. XLA:CPU runs that outer-axis reduction with a
  large output ~50x slower than the same sum as a matrix-vector product with ones.
  """
  return scores + bias


def _add_window_bias_fwd(scores, bias):
  return scores + bias, scores.shape[0]


def _add_window_bias_bwd(num_windows, g):
  ones = jnp.ones((num_windows,), g.dtype)
  dbias = jnp.dot(ones, g.reshape(num_windows, -1), precision=jax.lax.Precision.HIGHEST)
  return g, dbias.reshape(g.shape[1:])


add_window_bias.defvjp(_add_window_bias_fwd, _add_window_bias_bwd)
