"""Parameter counts and MACs against the papers. (Every model's parameters equal timm's
by name and shape wherever a parity test loads a timm state_dict: the load refuses any
missing, unexpected or misshapen key.)"""
import jax
import pytest
from flax import nnx

from tinyvit_jax.models import conv_ops, create_model
from tinyvit_jax.models.macs import count_macs, xla_flops


def _num_params(model) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize('name, num_classes, expected', [
    ('tiny_vit_5m_224', 1000, 5_392_764),
    ('tiny_vit_11m_224', 1000, 10_996_972),
    ('tiny_vit_21m_224', 1000, 21_198_568),
    ('tiny_vit_5m_224', 21841, 12_082_725),
    ('deit_tiny_distilled_patch16_224', 1000, 5_910_800),
])
def test_param_counts_match_the_papers(name, num_classes, expected):
  assert _num_params(create_model(name, num_classes=num_classes)) == expected


@pytest.mark.parametrize('name, img_size, paper_gmacs', [
    ('tiny_vit_5m_224', 224, 1.3),
    ('tiny_vit_11m_224', 224, 2.0),
    ('tiny_vit_21m_224', 224, 4.3),
    ('tiny_vit_21m_384', 384, 13.8),
    ('tiny_vit_21m_512', 512, 27.0),
])
def test_macs_within_10_percent_of_paper(name, img_size, paper_gmacs):
  model = create_model(name)
  model.eval()
  gmacs = count_macs(model, img_size) / 1e9
  assert abs(gmacs - paper_gmacs) <= 0.1 * paper_gmacs, gmacs


def test_xla_cost_analysis_agrees_with_the_mac_count():
  """XLA counts 2 flops per MAC plus the elementwise ops, which cost a little extra."""
  model = create_model('tiny_vit_5m_224')
  model.eval()
  macs = count_macs(model, 224)
  with conv_ops.conv_impl('xla'):  # the shifted multiplies count as elementwise flops
    flops = xla_flops(model, 224)
  assert 2 * macs <= flops <= 2 * macs * 1.25


def test_the_mac_count_does_not_depend_on_the_formulation():
  """The CPU's depthwise convs are shifted multiplies, not convolutions: counted all the
  same (TinyViT-5M: 1.255 G, not 1.236 G)."""
  model = create_model('tiny_vit_5m_224')
  model.eval()
  counts = set()
  for impl in ('xla', 'shifts'):
    with conv_ops.conv_impl(impl):
      counts.add(count_macs(model, 224))
  assert len(counts) == 1 and round(counts.pop() / 1e6) == 1255
