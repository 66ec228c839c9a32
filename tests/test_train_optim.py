"""The optimiser: schedule against timm's, the weight-decay mask against timm's groups on
the real models, Cream's layer ids and the lr ratios they give, clipping, frozen leaves,
gradient accumulation against one big batch, AdamW against torch's, and EMA."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from hypothesis import given, settings, strategies as st

from timm_reference import create_timm_model
from tinyvit_jax.data import pipeline
from tinyvit_jax.models import create_model
from tinyvit_jax.train import optim
from tinyvit_jax.train import step as step_lib

TINY_VIT = 'tiny_vit_5m_224'
DEIT = 'deit_tiny_distilled_patch16_224'
TINY_VIT_DEPTHS = (2, 2, 6, 2)


def _params(name, **kwargs):
  """The model's params as shapes (names and ranks are all the rules read)."""
  model = nnx.eval_shape(lambda: create_model(name, num_classes=10, **kwargs))
  _, params, _ = nnx.split(model, nnx.Param, ...)  # as the trainer's TrainState splits
  return params


@pytest.fixture(scope='module')
def tiny_vit_params():
  return _params(TINY_VIT, img_size=64)


@pytest.fixture(scope='module')
def deit_params():
  return _params(DEIT, img_size=32)


def _named(tree) -> dict:
  return {optim.param_name(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _timm_lr(base_lr, total, warmup, min_lr, warmup_lr, t):
  from timm.scheduler.cosine_lr import CosineLRScheduler
  opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
  sched = CosineLRScheduler(opt, t_initial=total, lr_min=min_lr, warmup_lr_init=warmup_lr,
                            warmup_t=warmup, cycle_limit=1, t_in_epochs=False)
  sched.step_update(t)
  return opt.param_groups[0]['lr']


@settings(max_examples=30, deadline=None)
@given(total=st.integers(2, 5000), warmup_frac=st.floats(0, 1), base_lr=st.floats(1e-5, 1e-2),
       min_ratio=st.floats(0, 0.5), warm_ratio=st.floats(0, 0.5), t_frac=st.floats(0, 1.2))
def test_schedule_matches_timm_cosine_scheduler(total, warmup_frac, base_lr, min_ratio, warm_ratio,
                                                t_frac):
  warmup = int(warmup_frac * total)
  min_lr, warmup_lr = base_lr * min_ratio, base_lr * warm_ratio
  schedule = optim.make_schedule(base_lr=base_lr, total_steps=total, warmup_steps=warmup,
                                 min_lr=min_lr, warmup_lr=warmup_lr)
  for t in {0, max(warmup - 1, 0), warmup, total // 2, total - 1, total, int(t_frac * total)}:
    np.testing.assert_allclose(float(schedule(t)),
                               _timm_lr(base_lr, total, warmup, min_lr, warmup_lr, t), rtol=2e-5,
                               atol=1e-7 * base_lr)


def test_schedule_key_steps():
  base, lo, warm, total, warmup = 1e-3, 1e-5, 1e-6, 1000, 100
  s = optim.make_schedule(base_lr=base, total_steps=total, warmup_steps=warmup, min_lr=lo,
                          warmup_lr=warm)
  assert math.isclose(float(s(0)), warm, rel_tol=1e-6)
  assert math.isclose(float(s(50)), (warm + base) / 2, rel_tol=1e-6)
  # The cosine spans the whole run, warmup included (timm's warmup_prefix=False).
  at_warmup_end = lo + 0.5 * (base - lo) * (1 + math.cos(math.pi * warmup / total))
  assert math.isclose(float(s(warmup)), at_warmup_end, rel_tol=1e-6)
  assert math.isclose(float(s(total // 2)), (base + lo) / 2, rel_tol=1e-6)
  assert math.isclose(float(s(total)), lo, rel_tol=1e-6)
  assert math.isclose(float(s(10 * total)), lo, rel_tol=1e-6)
  no_warmup = optim.make_schedule(base_lr=base, total_steps=total, warmup_steps=0)
  assert math.isclose(float(no_warmup(0)), base, rel_tol=1e-6)
  with pytest.raises(ValueError, match='warmup_steps=20'):
    optim.make_schedule(base_lr=base, total_steps=10, warmup_steps=20)


def _to_timm_name(name: str) -> str:
  parts = name.split('/')
  if parts[-1] in ('kernel', 'scale'):
    parts[-1] = 'weight'
  return '.'.join(parts)


@pytest.mark.parametrize('name', [TINY_VIT, DEIT])
def test_decay_mask_equals_timm_param_groups(name, tiny_vit_params, deit_params):
  from timm.optim import param_groups_weight_decay
  params = tiny_vit_params if name == TINY_VIT else deit_params
  timm_model = create_timm_model(name, num_classes=10)
  groups = param_groups_weight_decay(timm_model, 0.05,
                                     no_weight_decay_list=timm_model.no_weight_decay())
  names_of = {id(p): n for n, p in timm_model.named_parameters()}
  timm_decayed = {names_of[id(p)] for g in groups if g['weight_decay'] > 0 for p in g['params']}
  mask = _named(optim.decay_mask(params))
  assert {_to_timm_name(n) for n in mask} == set(names_of.values())
  assert {_to_timm_name(n) for n, decays in mask.items() if decays} == timm_decayed


def test_decay_mask_spares_named_kinds(tiny_vit_params, deit_params):
  for params in (tiny_vit_params, deit_params):
    mask = _named(optim.decay_mask(params))
    for name, decays in mask.items():
      leaf = name.split('/')[-1]
      assert decays == (leaf == 'kernel'), name
  tv = _named(optim.decay_mask(tiny_vit_params))
  assert not tv['stages/1/blocks/0/attn/attention_biases']
  assert not tv['patch_embed/conv1/bn/scale'] and not tv['head/norm/scale']
  assert tv['stages/0/blocks/0/conv2/conv/kernel']  # depthwise (3, 3, 1, C) decays, as in timm
  dt = _named(optim.decay_mask(deit_params))
  assert not any(dt[k] for k in ('cls_token', 'dist_token', 'pos_embed', 'blocks/0/norm1/scale'))


def test_tiny_vit_layer_ids_follow_cream(tiny_vit_params):
  ids = _named(optim.layer_ids(tiny_vit_params, TINY_VIT))
  depth = sum(TINY_VIT_DEPTHS)
  starts = np.cumsum((0,) + TINY_VIT_DEPTHS)
  for name, i in ids.items():
    parts = name.split('/')
    if parts[0] == 'patch_embed':
      assert i == 0, name
    elif parts[0] == 'head':
      assert i == depth - 1, name  # Cream: the head shares the last block's lr
    elif parts[2] == 'blocks':
      assert i == starts[int(parts[1])] + int(parts[3]), name
    else:
      assert parts[2] == 'downsample' and i == starts[int(parts[1])] - 1, name
  order = [ids[n] for n in sorted(ids, key=_depth_order)]
  assert order == sorted(order) and max(order) == ids['head/fc/kernel']


def _depth_order(name: str):
  parts = name.split('/')
  if parts[0] == 'patch_embed':
    return (-1, 0, 0)
  if parts[0] == 'head':
    return (99, 0, 0)
  return (int(parts[1]), 0 if parts[2] == 'downsample' else 1,
          int(parts[3]) if parts[2] == 'blocks' else 0)


def test_deit_layer_ids_follow_beit(deit_params):
  ids = _named(optim.layer_ids(deit_params, DEIT))
  depth = 12
  for name, i in ids.items():
    top = name.split('/')[0]
    if top in ('cls_token', 'dist_token', 'pos_embed', 'patch_embed'):
      assert i == 0, name
    elif top == 'blocks':
      assert i == int(name.split('/')[1]) + 1, name
    else:
      assert top in ('norm', 'head', 'head_dist') and i == depth + 1, name
  with pytest.raises(ValueError, match='no layer rule'):
    optim.layer_ids(deit_params, 'resnet50')


@pytest.mark.parametrize('name', [TINY_VIT, DEIT])
def test_layer_decay_scales_each_leafs_update(name, tiny_vit_params, deit_params):
  """Adam's first update is lr * sign(g): its size per leaf is the leaf's lr exactly."""
  params = tiny_vit_params if name == TINY_VIT else deit_params
  lr, decay = 1e-3, 0.8
  ids = optim.layer_ids(params, name)
  tx = optim.make_optimizer(params, schedule=lambda _: lr, weight_decay=0.0, eps=1e-12,
                            layer_decay=decay, layer_ids=ids)

  @jax.jit
  def first_update():
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
    return tx.update(jax.tree.map(jnp.ones_like, zeros), tx.init(zeros), zeros)[0]

  updates = first_update()
  assert jax.tree.structure(updates) == jax.tree.structure(params)  # an nnx.State in, out
  top = max(jax.tree.leaves(ids))
  for (n, u), i in zip(_named(updates).items(), _named(ids).values()):
    np.testing.assert_allclose(np.abs(np.asarray(u)), lr * decay**(top - i), rtol=1e-5, err_msg=n)
  with pytest.raises(ValueError, match='needs layer_ids'):
    optim.make_optimizer(params, schedule=lr, weight_decay=0.0, layer_decay=decay)


def _toy_params(seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return dict(dense=dict(kernel=jax.random.normal(k1, (4, 3)), bias=jax.random.normal(k2, (3,))),
              norm=dict(scale=jnp.ones(3), bias=jnp.zeros(3)))


def _random_grads(params, seed, scale):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef,
                            [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


@settings(max_examples=20, deadline=None)
@given(scale=st.floats(1e-3, 1e3), clip=st.floats(0.1, 10), seed=st.integers(0, 1000))
def test_clipping_bounds_the_gradient_adam_sees(scale, clip, seed):
  params = _toy_params()
  kwargs = dict(schedule=1e-2, weight_decay=0.05)
  clipped = optim.make_optimizer(params, clip_grad_norm=clip, **kwargs)
  manual = optim.make_optimizer(params, **kwargs)
  s_clip, s_manual, p_clip, p_manual = clipped.init(params), manual.init(params), params, params
  for step in range(3):
    grads = _random_grads(params, seed + step, scale * (step + 1))
    norm = float(optax.global_norm(grads))
    by_hand = jax.tree.map(lambda g: g * min(1.0, clip / norm), grads)
    u_clip, s_clip = clipped.update(grads, s_clip, p_clip)
    u_manual, s_manual = manual.update(by_hand, s_manual, p_manual)
    p_clip, p_manual = optax.apply_updates(p_clip, u_clip), optax.apply_updates(p_manual, u_manual)
    if step == 0:  # Adam's first moment is (1 - b1) times the clipped gradient
      mu = jax.tree.leaves(s_clip, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
      mu = next(s for s in mu if isinstance(s, optax.ScaleByAdamState)).mu
      assert float(optax.global_norm(mu)) / 0.1 <= clip * (1 + 1e-5)
      np.testing.assert_allclose(float(optax.global_norm(mu)) / 0.1, min(norm, clip), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(p_clip), jax.tree.leaves(p_manual)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_frozen_leaves_never_change_and_do_not_count_in_the_norm():
  params = dict(_toy_params(1), bn=dict(scale=jnp.ones(3), bias=jnp.zeros(3)))
  is_bn = lambda name, _: name.startswith('bn/')  # noqa: E731
  tx = optim.make_optimizer(params, schedule=1e-2, weight_decay=0.1, clip_grad_norm=1.0,
                            frozen=is_bn)
  state, p = tx.init(params), params
  for step in range(3):
    updates, state = tx.update(_random_grads(params, step, 1.0), state, p)
    p = optax.apply_updates(p, updates)
  before, after = _named(params), _named(p)
  for name in before:
    assert np.array_equal(before[name], after[name]) == name.startswith('bn/'), name
  # Huge gradients on frozen leaves change nothing for the others (not in the clip norm).
  grads = _random_grads(params, 7, 1.0)
  loud = optim.map_named(lambda n, g: g * 1e6 if n.startswith('bn/') else g, grads)
  quiet = optim.map_named(lambda n, g: g * 0 if n.startswith('bn/') else g, grads)
  u_loud, _ = tx.update(loud, tx.init(params), params)
  u_quiet, _ = tx.update(quiet, tx.init(params), params)
  for a, b in zip(jax.tree.leaves(u_loud), jax.tree.leaves(u_quiet)):
    np.testing.assert_array_equal(a, b)
  mask = dict(jax.tree.map(lambda _: False, params), bn=dict(scale=True, bias=True))
  by_mask = optim.make_optimizer(params, schedule=1e-2, weight_decay=0.1, clip_grad_norm=1.0,
                                 frozen=mask)
  u_mask, _ = by_mask.update(loud, by_mask.init(params), params)
  for a, b in zip(jax.tree.leaves(u_mask), jax.tree.leaves(u_loud)):
    np.testing.assert_array_equal(a, b)


def _linear_loss(params, x, y):
  return jnp.mean((x @ params['dense']['kernel'] + params['dense']['bias'] - y)**2)


_ACCUM_KWARGS = dict(schedule=optim.make_schedule(base_lr=0.1, total_steps=4, warmup_steps=1),
                     weight_decay=0.05, clip_grad_norm=0.5)


@functools.cache
def _jitted_optimizer(k: int):
  """(init, jitted update) for ``k`` accumulation steps; one compile per k over the test."""
  params = dict(dense=_toy_params()['dense'])
  tx = optim.make_optimizer(params, grad_accum_steps=k, **_ACCUM_KWARGS)
  return tx.init, jax.jit(tx.update)


@settings(max_examples=12, deadline=None)
@given(k=st.integers(2, 4), micro=st.integers(1, 5), seed=st.integers(0, 1000))
def test_accumulation_equals_one_step_on_the_whole_batch(k, micro, seed):
  params = dict(dense=_toy_params(seed)['dense'])
  rng = np.random.default_rng(seed)
  (accum_init, accum), (whole_init, whole) = _jitted_optimizer(k), _jitted_optimizer(1)
  s_accum, s_whole, p_accum, p_whole = accum_init(params), whole_init(params), params, params
  grad = jax.jit(jax.grad(_linear_loss))
  for _ in range(3):
    x = rng.normal(size=(k * micro, 4)).astype(np.float32)
    y = rng.normal(size=(k * micro, 3)).astype(np.float32)
    for i in range(k):
      part = slice(i * micro, (i + 1) * micro)
      updates, s_accum = accum(grad(p_accum, x[part], y[part]), s_accum, p_accum)
      if i < k - 1:
        assert all(not np.any(u) for u in jax.tree.leaves(updates))
      p_accum = optax.apply_updates(p_accum, updates)
    updates, s_whole = whole(grad(p_whole, x, y), s_whole, p_whole)
    p_whole = optax.apply_updates(p_whole, updates)
  for a, b in zip(jax.tree.leaves(p_accum), jax.tree.leaves(p_whole)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_adamw_matches_torch_with_param_groups_and_clipping():
  """torch AdamW with a decay and a no-decay group and clip_grad_norm_, per step lr."""
  params = _toy_params(3)
  lr = optim.make_schedule(base_lr=1e-2, total_steps=6, warmup_steps=2, min_lr=1e-4, warmup_lr=1e-3)
  tx = optim.make_optimizer(params, schedule=lr, weight_decay=0.3, clip_grad_norm=0.7)
  named = {n: torch.tensor(np.asarray(v), requires_grad=True) for n, v in _named(params).items()}
  decay = [named['dense/kernel']]
  no_decay = [v for n, v in named.items() if n != 'dense/kernel']
  torch_opt = torch.optim.AdamW(
      [dict(params=decay, weight_decay=0.3),
       dict(params=no_decay, weight_decay=0.0)], lr=1.0, eps=1e-8)
  state, p = tx.init(params), params
  for t in range(6):
    grads = _random_grads(params, t, 2.0)
    updates, state = tx.update(grads, state, p)
    p = optax.apply_updates(p, updates)
    for n, g in _named(grads).items():
      named[n].grad = torch.tensor(np.asarray(g))
    torch.nn.utils.clip_grad_norm_(list(named.values()), 0.7)
    for group in torch_opt.param_groups:
      group['lr'] = float(lr(t))
    torch_opt.step()
  for n, v in _named(p).items():
    np.testing.assert_allclose(np.asarray(v), named[n].detach().numpy(), rtol=1e-5, atol=1e-6,
                               err_msg=n)


class _Small(nnx.Module):

  def __init__(self, rngs):
    self.fc = nnx.Linear(4, 3, rngs=rngs)
    self.bn = nnx.BatchNorm(3, rngs=rngs)
    self.head = nnx.Linear(3, 2, rngs=rngs)

  def __call__(self, x):
    return self.head(self.bn(self.fc(x)))


def test_a_jitted_train_step_on_nnx_state():
  """Masks, layer scales and MultiSteps over an nnx.State inside jit, as the trainer runs."""
  model = _Small(nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  ids = optim.map_named(lambda n, _: 1 if n.startswith('head/') else 0, params)
  tx = optim.make_optimizer(params, schedule=1e-2, weight_decay=0.05, clip_grad_norm=5.0,
                            layer_decay=0.5, layer_ids=ids, frozen=lambda n, _: n.startswith('bn/'),
                            grad_accum_steps=2)

  @jax.jit
  def step(params, opt_state, x):

    def loss(params):
      return jnp.mean(nnx.merge(graphdef, params, rest, copy=True)(x)**2)

    updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  x = jax.random.normal(jax.random.key(1), (8, 4))
  new, opt_state = params, tx.init(params)
  for _ in range(4):
    new, opt_state = step(new, opt_state, x)
  assert jax.tree.structure(new) == jax.tree.structure(params)
  before, after = _named(params), _named(new)
  for name in before:
    assert np.array_equal(before[name], after[name]) == name.startswith('bn/'), name
  assert sorted(
      n for n, d in _named(optim.decay_mask(params)).items() if d) == ['fc/kernel', 'head/kernel']


def test_the_train_step_updates_the_state_in_place_of_the_old_one():
  """The step donates the state: on an accelerator the params, BN statistics and AdamW
  moments are held once, not twice, and each step's outputs reuse the inputs' buffers."""
  model = _Small(nnx.Rngs(0))
  mesh = pipeline.data_mesh()
  tx = optax.adamw(1e-3)
  state = step_lib.TrainState.create(model, tx, mesh)
  step = step_lib.make_train_step(state, tx, mesh, inputs=lambda batch, _: (batch['x'], None),
                                  loss_fn=lambda outputs, _: jnp.mean(outputs**2))
  old = state.leaves
  state.leaves, metrics = step(old, dict(x=jnp.ones((8, 4))), None)
  assert np.isfinite(float(metrics['loss']))
  assert all(leaf.is_deleted() for leaf in old)
  assert not any(leaf.is_deleted() for leaf in state.leaves)


@settings(max_examples=30, deadline=None)
@given(decay=st.floats(0, 0.9999), n=st.integers(1, 50), seed=st.integers(0, 100))
def test_ema_update(decay, n, seed):
  rng = np.random.default_rng(seed)
  start = dict(w=rng.normal(size=(3, 2)), b=rng.normal(size=2))
  target = dict(w=rng.normal(size=(3, 2)), b=rng.normal(size=2))
  ema = start
  for _ in range(n):
    ema = optim.ema_update(ema, target, decay)
  for key in start:
    closed_form = decay**n * start[key] + (1 - decay**n) * target[key]
    np.testing.assert_allclose(ema[key], closed_form, rtol=1e-9, atol=1e-12)
  once = optim.ema_update(start, target, decay)
  np.testing.assert_allclose(once['w'], decay * start['w'] + (1 - decay) * target['w'])
