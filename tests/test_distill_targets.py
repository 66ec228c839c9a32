"""Dense and tempered targets rebuilt from top-k rows, against their definitions."""
import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import official_targets
from tinyvit_jax.distill import targets


def topk_rows(seed: int, rows: int, k: int, num_classes: int):
  """Float16 top-k of random softmaxes, sorted descending, and the full float64 rows."""
  rng = np.random.default_rng(seed)
  probs = rng.dirichlet(np.full(num_classes, 0.3), size=rows)
  indices = np.argsort(-probs, axis=1, kind='stable')[:, :k]
  values = np.take_along_axis(probs, indices, axis=1).astype(np.float16)
  return values, indices, probs


row_shapes = st.integers(
    2, 60).flatmap(lambda c: st.tuples(st.integers(0, 2**31), st.integers(1, c), st.just(c)))


@settings(max_examples=40, deadline=None)
@given(row_shapes)
def test_dense_rows_sum_to_one_with_topk_exact_and_tail_uniform(shape):
  seed, k, num_classes = shape
  values, indices, _ = topk_rows(seed, 5, k, num_classes)
  dense = np.asarray(targets.dense_targets(values, indices, num_classes))

  assert dense.shape == (5, num_classes) and dense.dtype == np.float32
  # With no tail (k == C) nothing absorbs the float16 rounding of the stored values.
  np.testing.assert_allclose(dense.sum(axis=1), 1, atol=1e-5 if k < num_classes else k * 2**-11)
  np.testing.assert_array_equal(np.take_along_axis(dense, indices, axis=1),
                                values.astype(np.float32))
  tail = np.ones_like(dense, bool)
  np.put_along_axis(tail, indices, False, axis=1)
  for row, in_tail, top in zip(dense, tail, values.astype(np.float32)):
    if k < num_classes:
      # Here and in the library, 1 - sum may round apart by up to k ulps of 1.
      np.testing.assert_allclose(row[in_tail], (1 - top.sum()) / (num_classes - k), rtol=1e-6,
                                 atol=k * 2**-23 / (num_classes - k))


@settings(max_examples=40, deadline=None)
@given(row_shapes, st.floats(0.25, 8))
def test_tempered_is_renormalised_power_exact_on_topk(shape, tau):
  """And equal to float64 numpy of the official formula, ``((1 - sum) / (C - k))^(1/tau)``
  on the tail, renormalised, on rows whose tail holds at least 1% (below it float32 sums
  move the tail share by up to 2e-4 of itself, 7e-4 after the power 1/0.25); a tail
  tempered twice is off by tens of percents there."""
  seed, k, num_classes = shape
  values, indices, _ = topk_rows(seed, 5, k, num_classes)
  tempered = np.asarray(targets.tempered_targets(values, indices, num_classes, tau))
  rows = (official_targets.tail_mass(values) >= 1e-2) | (k == num_classes)
  np.testing.assert_allclose(tempered[rows],
                             official_targets.tempered(values, indices, num_classes, tau)[rows],
                             rtol=2e-3, atol=1e-30)
  np.testing.assert_allclose(tempered.sum(axis=1), 1, atol=1e-5)
  top = np.take_along_axis(tempered, indices, axis=1)
  expected_ratio = (values[:, 1:].astype(np.float64) / values[:, :1])**(1 / tau)
  np.testing.assert_allclose(top[:, 1:] / top[:, :1], expected_ratio, rtol=1e-4, atol=1e-30)
  tail = np.ones_like(tempered, bool)
  np.put_along_axis(tail, indices, False, axis=1)
  for row, in_tail in zip(tempered, tail):
    if k < num_classes:
      np.testing.assert_allclose(row[in_tail], row[in_tail][0], rtol=1e-6)


def test_tempered_tail_at_tau_two_and_one_half():
  """Two rows written out: top-2 of 5 classes, tail share 0.1 each."""
  values, indices = np.array([[0.5, 0.2]] * 2, np.float16), np.array([[3, 0], [1, 4]])
  for tau in (2.0, 0.5):
    row = np.array([0.2, 0.1, 0.1, 0.5, 0.1])**(1 / tau)
    expected = np.stack([row, row[[1, 3, 2, 4, 0]]]) / row.sum()
    np.testing.assert_allclose(targets.tempered_targets(values, indices, 5, tau), expected,
                               rtol=1e-3)


@settings(max_examples=25, deadline=None)
@given(row_shapes)
def test_tau_one_is_dense(shape):
  seed, k, num_classes = shape
  k = min(k, num_classes - 1)  # at k == C, dense rows keep the float16 sum; tempered renormalises
  values, indices, _ = topk_rows(seed, 5, k, num_classes)
  tempered = targets.tempered_targets(values, indices, num_classes, 1.0)
  dense = targets.dense_targets(values, indices, num_classes)
  # Equal, except where float16 rounding pushed the stored sum past 1: tempered clips the
  # negative tail share to 0 and renormalises, a change within that rounding.
  exact = values.astype(np.float32).sum(axis=1) <= 1
  np.testing.assert_allclose(tempered[exact], dense[exact], atol=1e-6)
  np.testing.assert_allclose(tempered, dense, atol=k * 2**-11)


def test_k_equal_to_classes_is_the_teachers_own_tempered_softmax():
  values, indices, probs = topk_rows(0, 4, 12, 12)
  tempered = targets.tempered_targets(values, indices, 12, 2.0)
  exact = probs**0.5 / (probs**0.5).sum(axis=1, keepdims=True)
  np.testing.assert_allclose(tempered, exact, atol=2e-3)  # float16 storage of probs


def test_leading_batch_dims_and_jit():
  values, indices, _ = topk_rows(1, 6, 3, 9)
  flat = targets.dense_targets(values, indices, 9)
  nested = jax.jit(targets.dense_targets, static_argnums=2)(values.reshape(2, 3, 3),
                                                            indices.reshape(2, 3, 3), 9)
  np.testing.assert_array_equal(nested.reshape(6, 9), flat)


def test_k_above_classes_is_refused():
  with pytest.raises(ValueError, match=r'k=5 exceeds the class count C=4'):
    targets.dense_targets(np.full((1, 5), 0.2, np.float16), np.arange(5)[None], 4)
