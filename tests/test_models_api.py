"""The registry, modes, dtypes and initialisation the papers prescribe."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tinyvit_jax.models import create_model, list_models, model_info


def test_unknown_name_suggests_the_closest():
  with pytest.raises(ValueError, match='Did you mean tiny_vit_5m_224'):
    create_model('tiny_vit_5m')


def test_num_classes_must_be_positive():
  with pytest.raises(ValueError, match='num_classes=0'):
    create_model('deit_tiny_patch16_224', num_classes=0)


def test_every_model_reports_its_input_size():
  for name in list_models():
    if name.startswith(('resnet', 'regnet')):
      continue  # the convnets' names carry no size (tests/test_models_convnets.py)
    assert model_info(name).input_size == int(name.rsplit('_', 1)[1])


def test_distilled_deit_returns_both_heads_in_train_mode_and_their_mean_in_eval():
  model = create_model('deit_tiny_distilled_patch16_224', img_size=32, num_classes=7)
  images = jnp.asarray(np.random.RandomState(0).randn(2, 32, 32, 3), jnp.float32)
  model.train()
  cls_logits, dist_logits = model(images)
  assert not np.allclose(cls_logits, dist_logits)
  model.eval()
  np.testing.assert_allclose(model(images), (cls_logits + dist_logits) / 2, atol=1e-6)


def test_deit_refuses_an_input_it_was_not_built_for():
  model = create_model('deit_tiny_patch16_224', img_size=32)
  with pytest.raises(ValueError, match='img_size=32'):
    model(jnp.zeros((1, 48, 48, 3)))


@pytest.mark.parametrize('name', ['tiny_vit_5m_224', 'deit_tiny_distilled_patch16_224'])
def test_bfloat16_compute_keeps_float32_params_and_close_logits(name):
  kwargs = dict(img_size=64 if name.startswith('tiny') else 32, num_classes=10)
  ref = create_model(name, rngs=nnx.Rngs(3), **kwargs)
  half = create_model(name, rngs=nnx.Rngs(3), dtype=jnp.bfloat16, **kwargs)
  params = nnx.state(half, nnx.Param)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  ref.eval()
  half.eval()
  images = jnp.asarray(
      np.random.RandomState(1).randn(2, kwargs['img_size'], kwargs['img_size'], 3), jnp.float32)
  apply = nnx.jit(lambda model, x: model(x))  # one compile, not one per op
  a, b = np.asarray(apply(ref, images)), apply(half, images)
  assert b.dtype == jnp.bfloat16
  b = np.asarray(b, np.float32)
  assert np.abs(a - b).max() <= 0.05 * max(1.0, np.abs(a).max())


def test_initialisation_follows_the_papers():
  model = create_model('tiny_vit_5m_224')
  for stage in model.stages[1:]:
    for block in stage.blocks:
      assert not np.any(block.attn.attention_biases[...])
  for block in model.stages[0].blocks:
    assert not np.any(block.conv3.bn.scale[...])  # each MBConv starts as identity + GELU
  kernel = np.asarray(model.stages[2].blocks[0].mlp.fc1.kernel[...])
  assert abs(kernel.std() - 0.02) < 0.001 and np.abs(kernel).max() <= 2.0
  assert not np.any(model.stages[2].blocks[0].mlp.fc1.bias[...])

  deit = create_model('deit_tiny_distilled_patch16_224')
  for token in (deit.cls_token, deit.dist_token, deit.pos_embed):
    assert abs(np.asarray(token[...]).std() - 0.02) < 0.004


def test_drop_path_drops_whole_samples_at_its_rate_and_rescales_the_rest():
  from tinyvit_jax.models.layers import DropPath
  drop = DropPath(0.25, rngs=nnx.Rngs(dropout=0))
  x = jnp.ones((4000, 3, 2, 5), jnp.float32)
  y = np.asarray(drop(x))
  per_sample = y.reshape(4000, -1)
  assert np.all(per_sample == per_sample[:, :1])  # one decision per sample
  assert set(np.unique(per_sample)) <= {0.0, np.float32(1 / 0.75)}
  dropped = np.mean(per_sample[:, 0] == 0)
  assert abs(dropped - 0.25) < 5 * np.sqrt(0.25 * 0.75 / 4000)  # 5 binomial sigma
  assert not np.array_equal(np.asarray(drop(x)), y)  # the stream advances per call
  drop.deterministic = True
  np.testing.assert_array_equal(drop(x), x)
