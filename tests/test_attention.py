"""The attention formulations agree on values and gradients; the switch picks per backend."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyvit_jax import target
from tinyvit_jax.models import attention


@functools.partial(jax.jit, static_argnames='impl')
def _value_and_grads(q, k, v, bias, probe, *, impl):

  def loss(q, k, v, bias):
    with attention.attention_impl(impl):  # the switch is read while tracing
      out = attention.attend(q, k, v, bias)
    return jnp.sum(jnp.sin(out.astype(jnp.float32)) * probe)  # a non-trivial cotangent

  argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
  return jax.value_and_grad(loss, argnums=argnums)(q, k, v, bias)


# Fixed odd shapes (each costs a compilation); hypothesis varies the values. DeiT's case
# has no bias, TinyViT's a (heads, T, T) one; tokens are odd or even, head dims 8-32.
_CASES = {
    'float32-bias': ((3, 7, 2, 8), 'float32', True),
    'float32': ((2, 6, 3, 16), 'float32', False),
    'bfloat16-bias': ((2, 6, 3, 32), 'bfloat16', True),
    'bfloat16': ((3, 7, 1, 8), 'bfloat16', False)
}
# Both forms compute float32 scores and softmax; they differ in layout and fusion. Worst
# differences over 300 random cases: 2.4e-6 in float32, 7.7e-3 (one rounding step at
# 1.0) in bfloat16.
_TOLERANCE = {'float32': 1e-5, 'bfloat16': 3e-2}


@pytest.mark.parametrize('case', _CASES)
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), spread=st.sampled_from([0.3, 1.0, 3.0]))
def test_formulations_agree_on_values_and_gradients(case, seed, spread):
  """``spread`` scales q and k: flat to peaked softmaxes."""
  shape, dtype, with_bias = _CASES[case]
  rng = np.random.RandomState(seed)
  q, k = (jnp.asarray(spread * rng.randn(*shape), dtype) for _ in range(2))
  v = jnp.asarray(rng.randn(*shape), dtype)
  _, tokens, heads, _ = shape
  bias = jnp.asarray(rng.randn(heads, tokens, tokens), jnp.float32) if with_bias else None
  probe = jnp.asarray(rng.randn(*shape), jnp.float32)

  value, grads = _value_and_grads(q, k, v, bias, probe, impl='einsum')
  value_ref, grads_ref = _value_and_grads(q, k, v, bias, probe, impl='xla')
  assert len(grads) == len(grads_ref) == (4 if with_bias else 3)
  for a, b in [(value, value_ref), *zip(grads, grads_ref)]:
    assert a.dtype == b.dtype and a.shape == b.shape
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    bound = _TOLERANCE[dtype] * max(1.0, float(np.abs(b).max()))
    assert np.abs(a - b).max() <= bound, (np.abs(a - b).max(), bound)


def test_attend_is_softmax_of_scaled_scores_plus_bias():
  """Both formulations against the formula written out (timm: scale, then add bias)."""
  rng = np.random.RandomState(0)
  q, k, v = (rng.randn(2, 5, 3, 8).astype(np.float32) for _ in range(3))
  bias = rng.randn(3, 5, 5).astype(np.float32)
  scores = np.einsum('bthd,bshd->bhts', q, k) * 8**-0.5 + bias
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  expected = np.einsum('bhts,bshd->bthd', probs / probs.sum(-1, keepdims=True), v)
  for impl in ('einsum', 'xla'):
    with attention.attention_impl(impl):
      np.testing.assert_allclose(attention.attend(q, k, v, bias), expected, rtol=1e-5, atol=1e-5)


# What 'auto' and 'cudnn' resolve to for a case cuDNN takes (bfloat16, head dim 8, no bias),
# per backend: einsum on a CPU, cuDNN on an (NVIDIA) GPU, XLA's form elsewhere.
_RESOLVED = {
    'cpu': dict(auto='einsum', cudnn='xla'),
    'gpu': dict(auto='cudnn', cudnn='cudnn'),
    'tpu': dict(auto='xla', cudnn='xla')
}


def test_auto_picks_the_backends_formulation_and_cudnn_falls_back_to_xla_off_gpu():
  before = attention.get_attention_impl()
  q = jnp.zeros((1, 4, 1, 8), jnp.bfloat16)
  expected = _RESOLVED[jax.default_backend()]
  for impl, resolved in (('auto', expected['auto']), ('einsum', 'einsum'), ('xla', 'xla'),
                         ('cudnn', expected['cudnn'])):
    with attention.attention_impl(impl):
      assert attention.resolve_attention_impl(q, None) == resolved
  assert attention.get_attention_impl() == before  # the context restored it


def test_cudnn_is_used_only_where_it_takes_the_case():

  def supports(shape, dtype, bias):
    with target.compiling_for(target.Target('gpu', cuda=True)):
      return attention.cudnn_supports(jnp.zeros(shape, dtype), jnp.zeros((1,)) if bias else None)

  assert supports((2, 197, 3, 64), jnp.bfloat16, bias=False)  # DeiT-Ti
  assert supports((2, 196, 5, 32), jnp.float16, bias=True)  # TinyViT's 14x14 windows
  assert not supports((2, 49, 5, 32), jnp.bfloat16, bias=True)  # 7x7: odd, with a bias
  assert not supports((2, 196, 5, 32), jnp.float32, bias=True)
  assert not supports((2, 196, 5, 12), jnp.bfloat16, bias=False)  # head dim % 8
  assert not supports((2, 196, 1, 256), jnp.bfloat16, bias=False)


def test_unknown_formulation_is_refused():
  before = attention.get_attention_impl()
  with pytest.raises(ValueError, match="'flash'"):
    attention.set_attention_impl('flash')
  assert attention.get_attention_impl() == before
