"""Epoch order and its split over steps and processes: pure arithmetic on (seed, epoch, step)."""
from hypothesis import given, settings, strategies as st
import numpy as np
import pytest

from tinyvit_jax.data import order


def _stream(seed, n, global_batch, process_index, process_count, steps):
  """(epoch, position, index) rows that one process reads over ``steps``."""
  per_epoch = order.steps_per_epoch(n, global_batch)
  rows = []
  for step in steps:
    epoch, batch = order.epoch_and_batch(step, per_epoch)
    positions = order.process_positions(batch, global_batch, process_index, process_count)
    indices = order.epoch_permutation(seed, epoch, n)[positions]
    rows += [(epoch, p, i) for p, i in zip(positions, indices)]
  return rows


def test_permutation_is_pure_and_changes_with_epoch_and_seed():
  first = order.epoch_permutation(3, 5, 1000)
  assert np.array_equal(np.sort(first), np.arange(1000))
  order.epoch_permutation.cache_clear()
  assert np.array_equal(order.epoch_permutation(3, 5, 1000), first)  # recomputed, same
  assert not np.array_equal(order.epoch_permutation(3, 6, 1000), first)
  assert not np.array_equal(order.epoch_permutation(4, 5, 1000), first)
  assert not first.flags.writeable  # the cached array cannot be corrupted by a caller


def test_permutation_is_pinned():
  # Guards the order across machines and library versions: stored teacher logits and
  # Mixup pairs depend on it.
  assert order.epoch_permutation(0, 0, 10).tolist() == [8, 5, 6, 3, 1, 7, 2, 4, 9, 0]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), global_batch=st.integers(1, 64), process_count=st.integers(1, 8))
def test_process_slices_tile_the_global_batch(n, global_batch, process_count):
  global_batch *= process_count
  if n < global_batch:
    return
  for batch in (0, order.steps_per_epoch(n, global_batch) - 1):
    slices = [
        order.process_positions(batch, global_batch, k, process_count) for k in range(process_count)
    ]
    assert np.array_equal(np.concatenate(slices),
                          np.arange(batch * global_batch, (batch + 1) * global_batch))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 200), global_batch=st.integers(1, 32), process_count=st.integers(1, 4),
       resume=st.integers(0, 30))
def test_resuming_at_a_step_continues_the_same_stream(n, global_batch, process_count, resume):
  global_batch *= process_count
  if n < global_batch:
    return
  straight = _stream(7, n, global_batch, process_count - 1, process_count, range(40))
  resumed = _stream(7, n, global_batch, process_count - 1, process_count, range(resume, 40))
  per_process = global_batch // process_count
  assert resumed == straight[resume * per_process:]


def test_each_epoch_reads_n_floor_b_examples_once_and_drops_the_tail():
  n, global_batch = 50, 8
  assert order.steps_per_epoch(n, global_batch) == 6
  rows = _stream(1, n, global_batch, 0, 1, range(12))
  for epoch in (0, 1):
    indices = [i for e, _, i in rows if e == epoch]
    assert len(indices) == len(set(indices)) == 48
    positions = [p for e, p, _ in rows if e == epoch]
    assert positions == list(range(48))
  dropped = [set(range(n)) - {i for e, _, i in rows if e == epoch} for epoch in (0, 1)]
  assert dropped[0] != dropped[1]  # the order changes, so different examples miss out


def test_eval_positions_cover_everything_once_padded_and_masked():
  n, global_batch = 21, 8
  assert order.eval_steps(n, global_batch) == 3
  seen = []
  for batch in range(3):
    for k in range(2):
      positions, mask = order.eval_positions(batch, n, global_batch, k, 2)
      assert len(positions) == 4 and positions.max() < n
      seen += positions[mask].tolist()
  assert seen == list(range(n))


def test_step_to_epoch_and_batch():
  assert [order.epoch_and_batch(s, 3) for s in (0, 2, 3, 7)] == [(0, 0), (0, 2), (1, 0), (2, 1)]
  with pytest.raises(ValueError, match='step -1 must be non-negative'):
    order.epoch_and_batch(-1, 3)


def test_empty_or_too_small_dataset():
  with pytest.raises(ValueError, match=r'dataset is empty \(0 examples\)'):
    order.epoch_permutation(0, 0, 0)
  with pytest.raises(ValueError, match=r'dataset is empty'):
    order.steps_per_epoch(0, 8)
  with pytest.raises(ValueError, match='has 5 examples, fewer than one global batch of 8'):
    order.steps_per_epoch(5, 8)


def test_batch_must_split_over_processes():
  with pytest.raises(ValueError, match='global batch 10 does not split over 4 processes'):
    order.process_positions(0, 10, 0, 4)
  with pytest.raises(ValueError, match=r'process index 4 is outside \[0, 4\)'):
    order.process_positions(0, 8, 4, 4)


def test_mixup_needs_an_even_per_device_batch():
  assert order.check_mixup_batch(64, 8) == 8
  with pytest.raises(ValueError, match='global batch 24 over 8 devices gives 3.*multiple of 16'):
    order.check_mixup_batch(24, 8)
  with pytest.raises(ValueError, match='global batch 20 does not split over 8 devices'):
    order.check_mixup_batch(20, 8)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 400), count=st.integers(1, 4), stride=st.integers(1, 40),
       seed=st.integers(0, 2**31))
def test_repeated_augmentation_shows_each_example_r_times_per_epoch(n, count, stride, seed):
  """The epoch keeps n positions (less n % r) and holds n // r distinct examples, each
  with views 0..r-1 exactly once: the first n // r of the epoch's permutation."""
  repeats = order.Repeats(count, stride)
  length = order.epoch_length(n, repeats)
  assert length == n // count * count
  if not length:
    return
  indices, views = order.epoch_examples(seed, 3, n, np.arange(length), repeats)
  seen = sorted(zip(indices.tolist(), views.tolist()))
  distinct = order.epoch_permutation(seed, 3, n)[:length // count]
  assert seen == sorted((int(i), v) for i in distinct for v in range(count))


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 400), count=st.integers(1, 4), stride=st.integers(1, 16),
       per_device=st.integers(1, 16), devices=st.integers(1, 8))
def test_repeats_spread_over_devices_like_rasampler(n, count, stride, per_device, devices):
  """Views of one example sit ``stride`` positions apart (but in the epoch's last
  block), so with a per-device batch of at most ``stride`` no device gets two of them in
  one step; with a global batch of whole blocks every view shares its example's step."""
  repeats = order.Repeats(count, stride)
  length = order.epoch_length(n, repeats)
  global_batch = min(per_device, stride) * devices
  if length < global_batch:
    return
  positions = np.arange(length // global_batch * global_batch)
  indices, _ = order.epoch_examples(0, 0, n, positions, repeats)
  step, device = np.divmod(positions,
                           global_batch)[0], positions % global_batch // (global_batch // devices)
  full_blocks = positions < length // (count * stride) * count * stride
  for index in np.unique(indices[full_blocks]):
    at = np.flatnonzero(indices == index)
    assert np.array_equal(np.diff(at), np.full(len(at) - 1, stride))
    placed = set(zip(step[at].tolist(), device[at].tolist()))
    assert len(placed) == len(at)  # never two views on one device in one step
    if global_batch % (count * stride) == 0 and len(at) == count:
      assert len(set(step[at].tolist())) == 1


def test_one_repeat_is_the_plain_order():
  indices, views = order.epoch_examples(4, 2, 97, np.arange(97))
  assert np.array_equal(indices, order.epoch_permutation(4, 2, 97)) and not views.any()


@pytest.mark.parametrize('repeats, message', [
    (order.Repeats(0, 64), 'num_repeats=0 must be a whole number >= 1'),
    (order.Repeats(1.5, 64), 'num_repeats=1.5 must be a whole number'),
    (order.Repeats(3, 0), 'repeat_stride=0 must be a whole number >= 1'),
])
def test_impossible_repeats_name_the_field(repeats, message):
  with pytest.raises(ValueError, match=message):
    order.epoch_examples(0, 0, 10, [0], repeats)


def test_positions_past_a_repeated_epoch_are_refused():
  with pytest.raises(ValueError, match=r'positions must lie in \[0, 9\)'):
    order.epoch_examples(0, 0, 10, [9], order.Repeats(3, 4))


def test_an_epoch_shorter_than_a_batch_under_repeats_names_both_sizes():
  """10 examples hold 10 positions plain, but 9 under 3 repeats: too few for a batch of 10."""
  assert order.steps_per_epoch(10, 10) == 1
  with pytest.raises(
      ValueError, match=r'has 10 examples \(9 positions under 3 repeats\), '
      'fewer than one global batch of 10'):
    order.steps_per_epoch(10, 10, order.Repeats(3, 4))


@settings(deadline=None, max_examples=25)
@given(seed=st.integers(0, 2**31), views=st.integers(1, 12), cycle=st.integers(0, 50))
def test_a_bounded_store_replays_each_view_once_a_cycle(seed, views, cycle):
  """Student epochs c*M .. c*M + M - 1 replay stored epochs 0..M-1, each once, in an order
  that depends on the seed and the cycle; without a bound an epoch is itself."""
  epochs = range(cycle * views, (cycle + 1) * views)
  replayed = [order.stored_epoch(seed, e, views) for e in epochs]
  assert sorted(replayed) == list(range(views))
  assert [order.stored_epoch(seed, e) for e in epochs] == list(epochs)


def test_bounded_schedules_differ_by_cycle_and_seed():
  schedule = lambda seed, cycle: [order.stored_epoch(seed, 10 * cycle + e, 10) for e in range(10)]
  assert len({tuple(schedule(0, cycle)) for cycle in range(5)}) == 5
  assert schedule(0, 0) != schedule(1, 0)
  with pytest.raises(ValueError, match=r'views_per_example=-1 must be a whole number >= 0'):
    order.stored_epoch(0, 0, -1)
