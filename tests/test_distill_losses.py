"""DeiT losses against a torch re-implementation of the official DistillationLoss."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import official_targets
from tinyvit_jax.data.augment.mix import smooth_one_hot
from tinyvit_jax.distill import losses
from tinyvit_jax.train import config as config_lib
from tinyvit_jax.distill import student


def official_deit_loss(outputs, labels, teacher_outputs, kind, alpha, tau):
  """facebookresearch/deit losses.DistillationLoss.forward, restated: the base criterion
  is SoftTargetCrossEntropy (DeiT with mixup) and the teacher's outputs are given."""
  cls_out, dist_out = outputs
  base = torch.sum(-labels * F.log_softmax(cls_out, dim=-1), dim=-1).mean()
  if kind == 'none':
    return base
  if kind == 'soft':
    distill = F.kl_div(F.log_softmax(dist_out / tau, dim=1),
                       F.log_softmax(teacher_outputs / tau, dim=1), reduction='sum',
                       log_target=True) * (tau * tau) / dist_out.numel()
  else:
    distill = F.cross_entropy(dist_out, teacher_outputs.argmax(dim=1))
  return base * (1 - alpha) + distill * alpha


# A few shapes, so that jax compiles each op for a handful of shapes only.
_cases = st.fixed_dictionaries(
    dict(batch=st.sampled_from([1, 3, 8]), classes=st.sampled_from([2, 7, 40]),
         seed=st.integers(0,
                          2**31 - 1), kind=st.sampled_from(losses.KINDS), alpha=st.floats(0.0, 1.0),
         tau=st.floats(0.25, 8.0), smoothing=st.sampled_from([0.0, 0.1]), two_heads=st.booleans()))


def _draw(case):
  rng = np.random.RandomState(case['seed'])
  b, c = case['batch'], case['classes']
  cls_out, dist_out, teacher = (3 * rng.randn(b, c).astype(np.float32) for _ in range(3))
  # Mixed, smoothed labels: two smoothed one-hots blended.
  lam = rng.rand(b, 1).astype(np.float32)
  labels = (lam * smooth_one_hot(rng.randint(0, c, b), c, case['smoothing']) +
            (1 - lam) * smooth_one_hot(rng.randint(0, c, b), c, case['smoothing']))
  if not case['two_heads']:
    dist_out = cls_out
  return cls_out, dist_out, np.asarray(labels), teacher


def _torch(*arrays):
  return [torch.tensor(np.asarray(a, np.float32)) for a in arrays]


@settings(max_examples=40, deadline=None)
@given(_cases)
def test_online_loss_matches_the_official_formula(case):
  cls_out, dist_out, labels, teacher = _draw(case)
  outputs = (cls_out, dist_out) if case['two_heads'] else cls_out
  ours = losses.deit_loss(outputs, labels, teacher, kind=case['kind'], alpha=case['alpha'],
                          tau=case['tau'])
  tc, td, tl, tt = _torch(cls_out, dist_out, labels, teacher)
  theirs = official_deit_loss((tc, td), tl, tt, case['kind'], case['alpha'], case['tau'])
  np.testing.assert_allclose(float(ours), theirs.item(), rtol=1e-5, atol=1e-5)


def _topk_rows(teacher, k):
  """The store's rows: the teacher's top-k softmax probabilities, descending."""
  probs = np.asarray(jax.nn.softmax(teacher, axis=-1))
  indices = np.argsort(-probs, axis=-1, kind='stable')[:, :k]
  return np.take_along_axis(probs, indices, axis=-1), indices


@settings(max_examples=40, deadline=None)
@given(_cases, st.sampled_from([1, 5, 39]))
@example(
    dict(batch=3, classes=7, seed=31, kind='soft', alpha=1.0, tau=3.0, smoothing=0.0,
         two_heads=False), 5)
def test_stored_topk_loss_matches_the_official_formula_on_the_rebuilt_teacher(case, k):
  """The official loss with the teacher's tempered probabilities q rebuilt from the top-k
  by the official formula in float64 numpy (``tau * log q`` as its logits, so that
  ``log_softmax(t / tau) = log q``)."""
  cls_out, dist_out, labels, teacher = _draw(case)
  c = case['classes']
  k = min(k, c - 1)  # a non-empty tail keeps log q finite
  values, indices = _topk_rows(teacher, k)
  outputs = (cls_out, dist_out) if case['two_heads'] else cls_out
  ours = losses.deit_loss_from_topk(outputs, labels, values, indices, kind=case['kind'],
                                    alpha=case['alpha'], tau=case['tau'])
  rebuilt = official_targets.tempered(values, indices, c, case['tau'])
  assume(np.all(rebuilt > 0))  # float32 rounding can leave the tail nothing
  rebuilt = case['tau'] * np.log(rebuilt)
  assert np.all(np.argmax(rebuilt, axis=-1) == indices[:, 0])
  tc, td, tl, tt = _torch(cls_out, dist_out, labels, rebuilt)
  theirs = official_deit_loss((tc, td), tl, tt, case['kind'], case['alpha'], case['tau'])
  # Soft distillation scales the KL, a difference of near-equal float32 sums, by tau^2:
  # its rounding too (6e-5 at tau 3 was seen). A wrong tau or rebuild is off by percents.
  scale = max(1.0, case['tau']**2) if case['kind'] == 'soft' else 1.0
  np.testing.assert_allclose(float(ours), theirs.item(), rtol=1e-5, atol=1e-5 * scale)


@settings(max_examples=30, deadline=None)
@given(_cases)
def test_a_full_store_gives_the_online_loss(case):
  """k == C: the stored probabilities are the whole softmax, so nothing is rebuilt."""
  cls_out, dist_out, labels, teacher = _draw(case)
  values, indices = _topk_rows(teacher, case['classes'])
  outputs = (cls_out, dist_out)
  kw = dict(kind=case['kind'], alpha=case['alpha'], tau=case['tau'])
  np.testing.assert_allclose(
      float(losses.deit_loss_from_topk(outputs, labels, values, indices, **kw)),
      float(losses.deit_loss(outputs, labels, teacher, **kw)), rtol=1e-5, atol=1e-5)


def test_each_head_learns_from_its_own_target():
  """The cls head's gradient comes from the labels only, the dist head's from the
  teacher only; the teacher gets none."""
  rng = np.random.RandomState(0)
  cls_out, dist_out, teacher = (jnp.asarray(rng.randn(4, 6), jnp.float32) for _ in range(3))
  labels = smooth_one_hot(jnp.arange(4), 6, 0.1)
  for kind in ('soft', 'hard'):
    grads = jax.grad(lambda c, d, t: losses.deit_loss((c, d), labels, t, kind=kind, alpha=1.0),
                     argnums=(0, 1, 2))(cls_out, dist_out, teacher)
    assert not np.any(grads[0]) and np.any(grads[1]) and not np.any(grads[2])
    grads = jax.grad(lambda c, d: losses.deit_loss((c, d), labels, teacher, kind=kind, alpha=0.0),
                     argnums=(0, 1))(cls_out, dist_out)
    assert np.any(grads[0]) and not np.any(grads[1])


def test_losses_jit_with_the_settings_static():
  rng = np.random.RandomState(1)
  cls_out, dist_out, teacher = (jnp.asarray(rng.randn(3, 5), jnp.float32) for _ in range(3))
  labels = smooth_one_hot(jnp.arange(3), 5, 0.1)
  values, indices = _topk_rows(np.asarray(teacher), 2)
  for kind in losses.KINDS:
    kw = dict(kind=kind, alpha=0.3, tau=2.0)
    eager = losses.deit_loss((cls_out, dist_out), labels, teacher, **kw)
    jitted = jax.jit(lambda c, d, l, t: losses.deit_loss((c, d), l, t, **kw))(cls_out, dist_out,
                                                                              labels, teacher)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    eager = losses.deit_loss_from_topk(cls_out, labels, values, indices, **kw)
    jitted = jax.jit(lambda c, l, v, i: losses.deit_loss_from_topk(c, l, v, i, **kw))(cls_out,
                                                                                      labels,
                                                                                      values,
                                                                                      indices)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)


def test_an_unknown_kind_is_named():
  with pytest.raises(ValueError, match="kind='tempered'"):
    losses.deit_loss(jnp.zeros((1, 2)), jnp.ones((1, 2)) / 2, jnp.zeros((1, 2)), kind='tempered')


def test_without_distillation_a_distilled_deit_trains_its_class_head_only():
  """The official DistillationLoss returns the base loss of the class head for 'none'."""
  config = config_lib.base_config()
  config.distill.kind = 'none'
  rng = np.random.default_rng(0)
  cls_out, dist_out = (jnp.asarray(rng.standard_normal((4, 10)) * 3, jnp.float32) for _ in range(2))
  targets = jax.nn.one_hot(jnp.arange(4), 10)
  loss = student.make_loss(config)((cls_out, dist_out), dict(labels=targets))
  np.testing.assert_allclose(loss, losses.soft_target_cross_entropy(cls_out, targets), rtol=1e-6)
