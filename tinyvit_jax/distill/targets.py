"""Dense teacher targets rebuilt from a stored sparse top-k row: the one place this is done.

The store keeps only the teacher's k largest probabilities; the other C - k classes
share what is left. Both functions take rows of any leading shape, (..., k), and return
float32 (..., C); they are pure jax.numpy, so they run inside the jitted student step.
"""
import jax.numpy as jnp


def dense_targets(values, indices, num_classes: int):
  """The official rebuild: top-k values at their classes, ``(1 - sum) / (C - k)`` elsewhere.

  Rows sum to 1. With k == C there is no other class: the row is the stored values,
  whose sum is 1 only up to their float16 rounding.
  As in the official code the remainder is not clipped: float16 rounding can make it a
  hair below zero.
  """
  values = jnp.asarray(values, jnp.float32)
  return _scatter_over_tail(values, indices, num_classes, _tail_probability(values, num_classes))


def tempered_targets(values, indices, num_classes: int, tau: float):
  """The teacher's softmax at temperature ``tau``, ``p^(1/tau)`` renormalised (DeiT soft).

  Exact on the top-k: their ratios are the teacher's tempered ratios. The tail is
  unknown, so each tail class is taken at the uniform share ``(1 - sum) / (C - k)``
  before tempering, i.e. gets ``((1 - sum) / (C - k))^(1/tau)`` before renormalising;
  the share is clipped at 0 first (float16 rounding can make it negative). Since a
  power mean is not a mean, this overstates the tempered tail mass when tau > 1 and
  understates it when tau < 1, by an amount that shrinks with the tail's mass. tau = 1
  gives ``dense_targets`` (renormalised, which matters only at k == C, where no tail
  absorbs the float16 rounding of the stored values).
  """
  values = jnp.asarray(values, jnp.float32)
  tail = jnp.maximum(_tail_probability(values, num_classes), 0.)
  tempered = _scatter_over_tail(values**(1 / tau), indices, num_classes, tail**(1 / tau))
  return tempered / tempered.sum(axis=-1, keepdims=True)


def _tail_probability(values, num_classes: int):
  """Each non-top-k class's share of what the top-k leave, shape (..., 1)."""
  k = values.shape[-1]
  if k > num_classes:
    raise ValueError(f'top-k k={k} exceeds the class count C={num_classes}.')
  return (1 - values.sum(axis=-1, keepdims=True)) / max(num_classes - k, 1)


def _scatter_over_tail(top, indices, num_classes: int, tail):
  """A (..., C) row holding ``tail`` everywhere and ``top`` at ``indices``."""
  dense = jnp.broadcast_to(tail, top.shape[:-1] + (num_classes,))
  return jnp.put_along_axis(dense, jnp.asarray(indices, jnp.int32), top, axis=-1, inplace=False)
