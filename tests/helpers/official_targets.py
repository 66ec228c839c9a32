"""The dense teacher target of a stored top-k row, as the official formula states it, in
float64 numpy: the tests' reference, written apart from ``tinyvit_jax.distill.targets``."""
import numpy as np


def dense(values, indices, num_classes: int) -> np.ndarray:
  """Top-k values at their classes, each other class at ``(1 - sum) / (C - k)``."""
  values = np.asarray(values, np.float64)
  k = values.shape[-1]
  share = (1 - values.sum(axis=-1)) / max(num_classes - k, 1)
  row = np.repeat(share[..., None], num_classes, axis=-1)
  np.put_along_axis(row, np.asarray(indices, np.int64), values, axis=-1)
  return row


def tempered(values, indices, num_classes: int, tau: float) -> np.ndarray:
  """``dense``'s row, its tail share clipped at 0 (float16 rounding can make it
  negative), every entry to the power ``1 / tau``, renormalised to sum 1."""
  row = np.maximum(dense(values, indices, num_classes), 0)**(1 / tau)
  return row / row.sum(axis=-1, keepdims=True)


def tail_mass(values) -> np.ndarray:
  """``1 - sum`` of each row's top-k: where it is small, float32 sums (the library's) and
  float64 ones (here) give tail shares that differ by a large fraction of themselves."""
  return 1 - np.asarray(values, np.float64).sum(axis=-1)
