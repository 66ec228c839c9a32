"""The loss of a training step, per config.

- ``distill.kind='none'``: labels, smoothed and mixed by the device augmentation; a
  distilled DeiT trains its class head only, as the official code does.
- ``'fpd'``: the teacher's stored top-k rows for the same augmented (and mixed) images,
  rebuilt dense (``distill.targets``); soft-target cross-entropy, no labels. The teacher
  saw the mixed image, so the stored row is already the mixed image's target.
- ``'soft'`` / ``'hard'``: DeiT distillation (``distill.losses``): the cls head learns from
  the labels, the distillation head from the teacher, online or from the store.
"""
from typing import Callable

from tinyvit_jax.distill import losses
from tinyvit_jax.distill import store_targets


def make_loss(config) -> Callable:
  """``loss(outputs, batch) -> mean loss`` for the config's distillation kind."""
  kind, num_classes = config.distill.kind, config.num_classes
  alpha, tau = config.distill.alpha, config.distill.tau

  def heads_mean(outputs, targets):
    heads = outputs if isinstance(outputs, tuple) else (outputs,)
    return sum(losses.soft_target_cross_entropy(h, targets) for h in heads) / len(heads)

  if kind == 'none':
    return lambda outputs, batch: losses.soft_target_cross_entropy(
        outputs[0] if isinstance(outputs, tuple) else outputs, batch['targets'])
  if kind == 'fpd':
    return lambda outputs, batch: heads_mean(
        outputs, store_targets.student_targets(batch, num_classes, mode='dense'))
  if config.distill.from_store:
    return lambda outputs, batch: losses.deit_loss_from_topk(
        outputs, batch['targets'], batch['teacher_values'], batch['teacher_indices'],
        kind=kind, alpha=alpha, tau=tau)
  return lambda outputs, batch: losses.deit_loss(
      outputs, batch['targets'], batch['teacher_logits'], kind=kind, alpha=alpha, tau=tau)
