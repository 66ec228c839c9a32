"""The optimiser of the paper recipes: AdamW with the official schedule, weight-decay
mask, clipping, layer-wise lr decay, frozen leaves, gradient accumulation, and EMA.

Parameters are named by their path in the params tree, e.g.
``stages/1/blocks/0/attn/qkv/kernel``: timm's module names with ``/``, so the rules
below read like timm's and the official code's.

- **Weight decay** (timm's ``param_groups_weight_decay`` with the models'
  ``no_weight_decay``): only kernels of 2 or more dimensions decay. Norm scales and
  biases, every bias, TinyViT's ``attention_biases`` and DeiT's ``cls_token``,
  ``dist_token`` and ``pos_embed`` do not.
- **Order** (as timm and Cream): clip the gradients by their global norm, Adam, add the
  decoupled weight decay, times the learning rate, times the leaf's layer scale. torch's
  AdamW multiplies the decay by the group's lr too, so scaling the whole update by the
  layer scale is what Cream's per-group ``lr * lr_scale`` does.
- **Frozen BN** (Cream's ``TRAIN.EVAL_BN_WHEN_TRAINING``, set by its 22k→1k fine-tuning
  configs): BatchNorm runs in eval mode, so it normalises with its running statistics
  and never updates them; its scale and bias still train. That is the trainer's job
  (``step.set_frozen_batchnorm``), not the optimiser's. ``frozen=`` here is for leaves
  that must not change at all: their gradients are zeroed before clipping (so they do
  not count in the global norm, like torch params with ``requires_grad=False``) and
  their updates after the weight decay.
"""
import math
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

# Leaf names that never decay, whatever their rank (the models' ``no_weight_decay``).
NO_WEIGHT_DECAY = frozenset({'attention_biases', 'cls_token', 'dist_token', 'pos_embed'})


def make_schedule(*, base_lr: float, total_steps: int, warmup_steps: int, min_lr: float = 0.,
                  warmup_lr: float = 0.) -> optax.Schedule:
  """Per-step linear warmup from ``warmup_lr``, then cosine decay to ``min_lr``.

  This is timm's ``CosineLRScheduler(t_initial=total_steps, warmup_t=warmup_steps,
  t_in_epochs=False)`` as Cream and DeiT configure it: the cosine spans all
  ``total_steps`` (warmup included), so at the end of warmup it already stands a little
  below ``base_lr``. Update ``t`` (counted from 0, in optimiser updates, not
  micro-batches) uses the value at ``t``; from ``total_steps`` on it is ``min_lr``.
  """
  if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
    raise ValueError(f'total_steps={total_steps}, warmup_steps={warmup_steps}: need '
                     '0 <= warmup_steps <= total_steps and total_steps >= 1.')
  warm_slope = (base_lr - warmup_lr) / max(warmup_steps, 1)

  def schedule(step):
    t = jnp.asarray(step, jnp.float32)
    # 0.5 * (1 + cos(x)) as cos(x / 2)**2: no cancellation near the end in float32.
    cosine = min_lr + (base_lr - min_lr) * jnp.cos(0.5 * math.pi * t / total_steps)**2
    decay = jnp.where(t < total_steps, cosine, min_lr)
    return jnp.where(t < warmup_steps, warmup_lr + t * warm_slope, decay)

  return schedule


def param_name(path) -> str:
  """``stages/1/blocks/0/attn/qkv/kernel`` for a key path of an nnx.State or a dict."""
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.GetAttrKey):
      if key.name != 'value':  # the array inside an nnx.Variable
        parts.append(key.name)
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    else:
      parts.append(str(key.key))
  return '/'.join(parts)


def map_named(fn: Callable[[str, Any], Any], params):
  """``fn(name, leaf)`` over the params tree, keeping its structure."""
  return jax.tree_util.tree_map_with_path(lambda path, leaf: fn(param_name(path), leaf), params)


def decays(name: str, leaf) -> bool:
  """Whether a parameter gets weight decay: kernels of rank >= 2, bar the tokens and
  position/attention biases."""
  return len(leaf.shape) >= 2 and name.rsplit('/', 1)[-1] not in NO_WEIGHT_DECAY


def decay_mask(params):
  """A tree of bools, True where the parameter decays."""
  return map_named(decays, params)


def layer_ids(params, model_name: str):
  """Each leaf's layer for layer-wise lr decay; the highest id gets the full lr.

  - TinyViT, as Cream's ``set_layer_lr_decay``: block ``g`` (counted over all stages,
    MBConv blocks included) has id ``g``; the patch embed shares block 0's id; a
    downsample (timm's, at the start of stage ``s``; Cream's, at the end of stage
    ``s-1``) shares the id of the last block before it; the head's norm and linear share
    the last block's id. So ids run 0..depth-1 and the head is not decayed.
  - DeiT, as BEiT/timm: ``cls_token``, ``dist_token``, ``pos_embed`` and the patch embed
    have id 0, block ``i`` has ``i+1``, and the final norm and heads ``depth+1``.
  """
  names = [param_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
  if model_name.startswith('tiny_vit'):
    id_of = _tiny_vit_ids(names)
  elif model_name.startswith('deit'):
    id_of = _deit_ids(names)
  else:
    raise ValueError(f'layer_ids: no layer rule for model {model_name!r} '
                     '(known: tiny_vit_*, deit_*).')
  return map_named(lambda name, _: id_of(name), params)


def _tiny_vit_ids(names) -> Callable[[str], int]:
  blocks = sorted({(int(m[1]), int(m[2])) for m in (re.match(r'stages/(\d+)/blocks/(\d+)/', n)
                                                    for n in names) if m})
  index = {block: i for i, block in enumerate(blocks)}

  def id_of(name: str) -> int:
    if name.startswith('patch_embed/'):
      return 0
    if m := re.match(r'stages/(\d+)/blocks/(\d+)/', name):
      return index[int(m[1]), int(m[2])]
    if m := re.match(r'stages/(\d+)/downsample/', name):
      return max(i for (stage, _), i in index.items() if stage < int(m[1]))
    if name.startswith('head/'):
      return len(blocks) - 1
    raise ValueError(f'layer_ids: TinyViT parameter {name!r} has no layer rule.')

  return id_of


def _deit_ids(names) -> Callable[[str], int]:
  depth = len({m[1] for m in (re.match(r'blocks/(\d+)/', n) for n in names) if m})

  def id_of(name: str) -> int:
    if name in ('cls_token', 'dist_token', 'pos_embed') or name.startswith('patch_embed/'):
      return 0
    if m := re.match(r'blocks/(\d+)/', name):
      return int(m[1]) + 1
    if name.split('/')[0] in ('norm', 'head', 'head_dist'):
      return depth + 1
    raise ValueError(f'layer_ids: DeiT parameter {name!r} has no layer rule.')

  return id_of


def layer_scales(ids, layer_decay: float):
  """``layer_decay ** (max_id - id)`` per leaf: 1 at the top layer, decaying inwards."""
  top = max(jax.tree.leaves(ids))
  return jax.tree.map(lambda i: float(layer_decay**(top - i)), ids)


def _scale_leaves(scales) -> optax.GradientTransformation:

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(params, *, schedule: optax.Schedule, weight_decay: float, b1: float = 0.9,
                   b2: float = 0.999, eps: float = 1e-8, clip_grad_norm: float | None = None,
                   layer_decay: float | None = None, layer_ids=None, frozen=None,
                   grad_accum_steps: int = 1) -> optax.GradientTransformation:
  """AdamW for ``params`` (an nnx.State of the model's ``nnx.Param`` or a plain tree).

  ``clip_grad_norm``: None or 0 is off. ``layer_decay``: None or 1 is off; otherwise
  ``layer_ids`` (a tree like ``params``, from ``layer_ids(params, model_name)``) is
  needed. ``frozen``: None, a tree of bools like ``params``, or ``fn(name, leaf) ->
  bool``; True leaves never change. ``grad_accum_steps > 1`` wraps everything in
  ``optax.MultiSteps``: each call takes one micro-batch's gradients, and every k-th
  applies one update with their mean (the schedule counts those updates); the others
  return zero updates.
  """
  frozen_mask = map_named(frozen, params) if callable(frozen) else frozen
  chain = []
  if frozen_mask is not None:
    chain.append(optax.masked(optax.set_to_zero(), frozen_mask))
  if clip_grad_norm:
    chain.append(optax.clip_by_global_norm(clip_grad_norm))
  chain += [
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
      optax.add_decayed_weights(weight_decay, mask=decay_mask(params)),
      optax.scale_by_learning_rate(schedule)
  ]
  if layer_decay is not None and layer_decay != 1:
    if layer_ids is None:
      raise ValueError(f'layer_decay={layer_decay} needs layer_ids '
                       '(optim.layer_ids(params, model_name)).')
    chain.append(_scale_leaves(layer_scales(layer_ids, layer_decay)))
  if frozen_mask is not None:
    chain.append(optax.masked(optax.set_to_zero(), frozen_mask))
  tx = optax.chain(*chain)
  if grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=grad_accum_steps).gradient_transformation()
  return tx


def ema_update(ema_params, params, decay: float):
  """``decay * ema + (1 - decay) * params`` per leaf (the model EMA of timm/DeiT)."""
  return jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema_params, params)
