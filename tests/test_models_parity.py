"""Numeric parity with timm: random-init timm model -> our converter -> our model."""
import numpy as np
import pytest

from timm_reference import assert_logits_close, create_timm_model, jit_forward, timm_logits
from tinyvit_jax.models.timm_weights import load_timm_state_dict
from tinyvit_jax.models import attention, conv_ops, create_model, list_models, model_info

# Whole-model parity of the big variants takes minutes on 2 cores: CI runs them.
_SLOW = {'tiny_vit_21m_384', 'tiny_vit_21m_512', 'deit_base_patch16_224',
         'deit_base_distilled_patch16_224'}
# The convnets' parity (eval and train, weights exported back) is
# tests/test_models_convnets.py's, at 72 px: odd maps, where a 224 input adds nothing.
_CONVNETS = ('resnet', 'regnet')
# The ViT/CLIP teachers' parity is tests/test_models_vit.py's, one option per test at small
# widths: at full size each is minutes on 2 cores.
_VITS = ('vit_', 'clip_vit_')
# DeiT at 384 runs DeiT at 224's code on more tokens (576 patches): the distilled tiny one
# checks it, both heads; the others' architecture is tests/test_models_vit.py's registry
# test, and their parity ~30 s of CI for no code of their own.
_DEIT_384 = ('deit_tiny_patch16_384', 'deit_small_patch16_384', 'deit_base_patch16_384',
             'deit_small_distilled_patch16_384', 'deit_base_distilled_patch16_384')


def check_parity(name, *, img_size=None, conv_impl='auto', batch=2, seed=0):
  size = img_size or model_info(name).input_size
  timm_model = create_timm_model(name, seed=seed, drop_path_rate=0.0)
  model = create_model(name, img_size=size, drop_path_rate=0.0)
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


@pytest.mark.parametrize('name', [
    pytest.param(n, marks=pytest.mark.slow) if n in _SLOW else n for n in list_models()
    if not n.startswith(_CONVNETS + _VITS) and n not in _DEIT_384])
def test_parity_with_timm(name):
  check_parity(name)


@pytest.mark.parametrize('conv_impl', ['xla', 'shifts'])
@pytest.mark.parametrize('img_size', [224, 160])
def test_tinyvit_both_conv_formulations_match_timm(conv_impl, img_size):
  """160 gives 40/20/10/5 maps: windows 7, 14, 7 need padding in every stage."""
  check_parity('tiny_vit_5m_224', img_size=img_size, conv_impl=conv_impl)


@pytest.mark.parametrize('name,img_size', [('tiny_vit_5m_224', 160),
                                           ('deit_tiny_patch16_224', 224)])
def test_xla_attention_formulation_matches_timm(name, img_size):
  """The CPU default (einsum) is the other tests'; this is jax.nn.dot_product_attention's
  XLA form, used on GPU where cuDNN does not take the case. DeiT's 197 tokens are odd."""
  with attention.attention_impl('xla'):
    check_parity(name, img_size=img_size)


@pytest.mark.slow
def test_tinyvit_21m_at_non_default_size_matches_timm():
  check_parity('tiny_vit_21m_224', img_size=288, batch=1)
