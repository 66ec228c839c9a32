"""DeiT's training losses (Touvron et al., 2021): labels for the cls head, the teacher
for the distillation head. Pure jax.numpy: they run inside the jitted student step.

The total is ``(1 - alpha) * CE(cls_out, labels) + alpha * distill``, as the official
``DistillationLoss`` (facebookresearch/deit, ``losses.py``) computes it:

* ``'none'``: the label term alone (``alpha`` is ignored).
* ``'soft'``: ``sum KL(softmax(t/tau) || softmax(s/tau)) * tau^2 / (B * C)``. The
  official code sums the KL over the batch *and* the classes and divides by
  ``outputs_kd.numel()``, i.e. by B*C, not by B ("the legacy PyTorch behaviour", deit
  issue 61). We keep that, so alpha and tau mean what they mean in the paper's recipes;
  a per-sample KL is this value times C.
* ``'hard'``: ``CE(dist_out, argmax t)``, batch mean.

Labels come as dense soft targets (``data.augment.mix.smooth_one_hot``, then Mixup/CutMix), so
the label term is soft-target cross-entropy, as DeiT's with mixup. A distilled DeiT in
train mode returns ``(cls_out, dist_out)``; any other model returns one output, which
then serves both terms (DeiT's distillation through the class token only; the official
code refuses that case).
"""
import jax
import jax.numpy as jnp

from tinyvit_jax.distill.targets import tempered_targets

KINDS = ('none', 'soft', 'hard')


def soft_target_cross_entropy(logits, targets):
  """Mean over the batch of ``-sum_c targets * log_softmax(logits)`` (timm's
  SoftTargetCrossEntropy); computed in float32."""
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  return jnp.mean(-jnp.sum(jnp.asarray(targets, jnp.float32) * logp, axis=-1))


def deit_loss(outputs, label_targets, teacher_logits, *, kind: str = 'none', alpha: float = 0.5,
              tau: float = 1.0):
  """DeiT's loss against a teacher run online.

  Args:
    outputs: the student's logits (B, C), or ``(cls_out, dist_out)`` of a distilled DeiT.
    label_targets: dense (B, C) label targets (smoothed and mixed upstream).
    teacher_logits: the teacher's (B, C) logits; log-probabilities work as well, since
      both the tempered softmax and the argmax ignore a per-row constant.
    kind: ``'none'``, ``'soft'`` or ``'hard'``.
  """
  cls_out, dist_out = _heads(outputs, kind)
  base = soft_target_cross_entropy(cls_out, label_targets)
  if kind == 'none':
    return base
  # No gradient reaches the teacher, as under the official torch.no_grad().
  teacher = jax.lax.stop_gradient(jnp.asarray(teacher_logits, jnp.float32))
  if kind == 'soft':
    teacher_logp = jax.nn.log_softmax(teacher / tau, axis=-1)
    distill = _soft_distill(dist_out, jnp.exp(teacher_logp), teacher_logp, tau)
  else:
    distill = _hard_distill(dist_out, jnp.argmax(teacher, axis=-1))
  return (1 - alpha) * base + alpha * distill


def deit_loss_from_topk(outputs, label_targets, values, indices, *, kind: str = 'none',
                        alpha: float = 0.5, tau: float = 1.0):
  """DeiT's loss against a teacher stored as sparse top-k probabilities (the FPD store).

  ``values``/``indices`` are the stored (B, k) rows, sorted by decreasing probability.
  Soft: the KL is against ``targets.tempered_targets`` (exact on the top-k, tail taken
  at its uniform share; exactly the online loss when k == C). Hard: the stored top-1
  class is the teacher's argmax. Other arguments as ``deit_loss``.
  """
  cls_out, dist_out = _heads(outputs, kind)
  base = soft_target_cross_entropy(cls_out, label_targets)
  if kind == 'none':
    return base
  if kind == 'soft':
    probs = tempered_targets(values, indices, dist_out.shape[-1], tau)
    logp = jnp.log(jnp.where(probs > 0, probs, 1.0))
    distill = _soft_distill(dist_out, probs, logp, tau)
  else:
    distill = _hard_distill(dist_out, jnp.asarray(indices)[..., 0])
  return (1 - alpha) * base + alpha * distill


def _heads(outputs, kind: str):
  if kind not in KINDS:
    raise ValueError(f'kind={kind!r}; expected one of {KINDS}.')
  if isinstance(outputs, (tuple, list)):
    cls_out, dist_out = outputs
    return cls_out, dist_out
  return outputs, outputs


def _soft_distill(student_logits, teacher_probs, teacher_logp, tau: float):
  """sum p_t (log p_t - log p_s) at temperature tau, times tau^2, over B*C (official).
  Classes with p_t == 0 add nothing (0 log 0 = 0)."""
  student_logp = jax.nn.log_softmax(jnp.asarray(student_logits, jnp.float32) / tau, axis=-1)
  kl = jnp.sum(teacher_probs * (teacher_logp - student_logp))
  return kl * tau * tau / student_logp.size


def _hard_distill(student_logits, teacher_classes):
  """Cross-entropy of the student against the teacher's top class, batch mean."""
  logp = jax.nn.log_softmax(jnp.asarray(student_logits, jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logp, jnp.asarray(teacher_classes, jnp.int32)[..., None], axis=-1)
  return -jnp.mean(picked)
