"""Teacher-like sparse top-k rows, for tests and benchmarks of the logit store.

Sizes and speeds of the store depend on what it holds, so its checks use rows shaped
like a classifier's: the softmax of Gaussian logits (a per-row scale, so some rows are
flat and some peaked) with a bump on one random class, kept as the top-k sorted
descending, in float16.
"""
import numpy as np

_BATCH = 256  # rows per softmax, so C = 21,841 stays a few MB


def teacher_like_topk(n: int, k: int, num_classes: int, seed: int = 0):
  """(values float16 (n, k) sorted descending, indices int64 (n, k)) of n softmaxes."""
  rng = np.random.default_rng(seed)
  values = np.empty((n, k), np.float16)
  indices = np.empty((n, k), np.int64)
  for start in range(0, n, _BATCH):
    rows = min(_BATCH, n - start)
    scale = rng.uniform(1.5, 3.5, (rows, 1)).astype(np.float32)
    logits = rng.standard_normal((rows, num_classes), np.float32) * scale
    logits[np.arange(rows), rng.integers(0, num_classes, rows)] += rng.uniform(0, 12, rows)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    top_probs = np.take_along_axis(probs, top, axis=1)
    order = np.argsort(-top_probs, axis=1, kind='stable')
    values[start:start + rows] = np.take_along_axis(top_probs, order, axis=1)
    indices[start:start + rows] = np.take_along_axis(top, order, axis=1)
  return values, indices  # rounding to float16 is monotone, so rows stay sorted
