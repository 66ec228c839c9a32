"""The CPU conv formulation (shifts, hand-written VJPs) against XLA's convolution."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from hypothesis import given, settings, strategies as st

from tinyvit_jax import target
from tinyvit_jax.models import conv_ops
from tinyvit_jax.models import create_model


def _loss(impl, stride, pad, groups):

  def loss(x, kernel, probe):
    y = conv_ops.conv2d(x, kernel, stride=stride, pad=pad, groups=groups, impl=impl)
    return jnp.sum(jnp.sin(y) * probe)  # a non-trivial cotangent

  return loss


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 3), size=st.integers(3, 9), channels=st.integers(1, 6),
       cout=st.integers(1, 5), k=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]),
       depthwise=st.booleans(), seed=st.integers(0, 2**16))
def test_shifts_match_xla_values_and_gradients(batch, size, channels, cout, k, stride, depthwise,
                                               seed):
  pad = k // 2
  groups = channels if depthwise else 1
  cout = channels if depthwise else cout
  rng = np.random.RandomState(seed)
  x = jnp.asarray(rng.randn(batch, size, size + 1, channels), jnp.float32)
  kernel = jnp.asarray(rng.randn(k, k, channels // groups, cout), jnp.float32)
  out_shape = jax.eval_shape(
      lambda: conv_ops.conv2d(x, kernel, stride=stride, pad=pad, groups=groups, impl='xla'))
  probe = jnp.asarray(rng.randn(*out_shape.shape), jnp.float32)

  ref = jax.value_and_grad(_loss('xla', stride, pad, groups), argnums=(0, 1))
  ours = jax.jit(jax.value_and_grad(_loss('shifts', stride, pad, groups), argnums=(0, 1)))
  (v_ref, (dx_ref, dk_ref)), (v, (dx, dk)) = ref(x, kernel, probe), ours(x, kernel, probe)
  np.testing.assert_allclose(v, v_ref, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dk, dk_ref, rtol=1e-4, atol=1e-4)


def test_depthwise_weight_gradient_chunks_over_a_batch_with_odd_factors(monkeypatch):
  """Tiny chunk budget: the batch of 6 splits into chunks of 2 (largest divisor fitting)."""
  monkeypatch.setattr(conv_ops, '_DW_GRAD_CHUNK_BYTES', 2 * 6 * 6 * 4 * 4)
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(6, 4, 4, 4), jnp.float32)
  kernel = jnp.asarray(rng.randn(3, 3, 1, 4), jnp.float32)
  grads = [
      jax.grad(_loss(impl, 1, 1, 4), argnums=1)(x, kernel, jnp.ones((6, 4, 4, 4)))
      for impl in ('xla', 'shifts')
  ]
  np.testing.assert_allclose(grads[1], grads[0], rtol=1e-5, atol=1e-5)


def test_unknown_impl_is_refused():
  with np.testing.assert_raises_regex(ValueError, "conv_impl='cudnn'"):
    conv_ops.resolve_conv_impl('cudnn')


def test_auto_picks_xla_convolutions_off_the_cpu():
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)

  def convs(backend):  # conv_general_dilated ops in TinyViT-5M's forward, shapes only
    with target.compiling_for(target.Target(backend)):
      model = nnx.eval_shape(lambda: create_model('tiny_vit_5m_224', img_size=32, window_sizes=
                                                  (1, 1, 2, 1)))
      graphdef, state = nnx.split(model)
      jaxpr = jax.make_jaxpr(lambda state, x: nnx.merge(graphdef, state)(x))(state, images)
      assert conv_ops.resolve_conv_impl('auto') == ('shifts' if backend == 'cpu' else 'xla')
    return str(jaxpr).count('conv_general_dilated')

  assert convs('cpu') == 0
  assert convs('gpu') == convs('tpu') > 0
  assert conv_ops.resolve_conv_impl('auto') == 'shifts'  # this CPU, once the context is left
