"""Numeric parity with timm: random-init timm model -> our converter -> our model."""
import numpy as np
import pytest

from timm_reference import assert_logits_close, create_timm_model, jit_forward, timm_logits
from timm_reference import timm_zeros_state_dict
from tinyvit_jax.models import attention, conv_ops, list_models, model_info
from tinyvit_jax.models import registry
from tinyvit_jax.models.timm_weights import load_timm_state_dict

# Numeric parity once per code path: TinyViT at its default (5M, 224) and at its largest
# windows (21M, 512), DeiT with and without the distillation token, and at 384 (576
# patches). The other TinyViT and DeiT names run the same code at other widths and
# depths: their weights must load into ours strictly (every key and shape of timm's), and
# DeiT's architecture is tests/test_models_vit.py's registry test.
_NUMERIC = ('tiny_vit_5m_224', 'tiny_vit_21m_512', 'deit_tiny_patch16_224',
            'deit_tiny_distilled_patch16_224', 'deit_tiny_distilled_patch16_384')
_SLOW = {'tiny_vit_21m_512'}
_LAYOUT = [n for n in list_models() if n.startswith(('tiny_vit_', 'deit_')) and n not in _NUMERIC]
# The convnets' parity (eval and train, weights exported back) is
# tests/test_models_convnets.py's, at 72 px; the ViT/CLIP teachers' is
# tests/test_models_vit.py's, one option per test at small widths.


def check_parity(name, *, img_size=None, conv_impl='auto', batch=2, seed=0):
  size = img_size or model_info(name).input_size
  timm_model = create_timm_model(name, seed=seed, drop_path_rate=0.0)
  model = registry.create_unfilled(name, img_size=size, drop_path_rate=0.0)  # timm's weights
  load_timm_state_dict(model, timm_model.state_dict())
  images = np.random.RandomState(seed).randn(batch, size, size, 3).astype(np.float32)

  timm_model.eval()
  model.eval()
  with conv_ops.conv_impl(conv_impl):
    ours = jit_forward(model, images)
  assert_logits_close(ours, timm_logits(timm_model, images))

  # Train mode: BN uses batch statistics; a distilled DeiT returns both heads.
  timm_model.train()
  if hasattr(timm_model, 'set_distilled_training'):
    timm_model.set_distilled_training(True)
  model.train()
  with conv_ops.conv_impl(conv_impl):
    ours = jit_forward(model, images)
  assert_logits_close(ours, timm_logits(timm_model, images))


@pytest.mark.parametrize(
    'name', [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW else n for n in _NUMERIC])
def test_parity_with_timm(name):
  check_parity(name)


@pytest.mark.parametrize('name', _LAYOUT)
def test_timms_weights_load_strictly(name):
  """timm's state_dict layout loaded into ours: the load refuses any missing, unexpected or
  misshapen key, so the two hold the same weights by name and shape."""
  load_timm_state_dict(registry.create_unfilled(name), timm_zeros_state_dict(name))


@pytest.mark.parametrize('conv_impl', ['xla', 'shifts'])
def test_tinyvit_both_conv_formulations_match_timm(conv_impl):
  """160 gives 40/20/10/5 maps: windows 7, 14, 7 need padding in every stage (224 under
  the CPU's default formulation is test_parity_with_timm's)."""
  check_parity('tiny_vit_5m_224', img_size=160, conv_impl=conv_impl)


@pytest.mark.parametrize('name,img_size', [('tiny_vit_5m_224', 160),
                                           ('deit_tiny_patch16_224', 224)])
def test_xla_attention_formulation_matches_timm(name, img_size):
  """The CPU default (einsum) is the other tests'; this is jax.nn.dot_product_attention's
  XLA form, used on GPU where cuDNN does not take the case. DeiT's 197 tokens are odd."""
  with attention.attention_impl('xla'):
    check_parity(name, img_size=img_size)


def test_tinyvit_at_non_default_size_matches_timm():
  check_parity('tiny_vit_5m_224', img_size=288, batch=1)
