"""Augmentation draws by sampling thousands of keys, against their intended laws.

Tolerances: a rate p from n draws is within 5 binomial sigmas, 5 sqrt(p (1 - p) / n); a
distribution's KS statistic is below the critical value at significance 1e-6,
sqrt(ln(2 / 1e-6) / 2) = 2.69, over sqrt(n) (one sample) or sqrt(n m / (n + m)) (two).
A correct implementation fails any one check about once in a million runs.
"""
import math
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from timm.data import mixup

from tinyvit_jax.data.augment import draws
from tinyvit_jax.data.augment import jax_ops
from tinyvit_jax.data.augment import host_crop
from tinyvit_jax.data.augment import mix

KS_CRITICAL = math.sqrt(math.log(2 / 1e-6) / 2)


def _assert_rate(hits, p):
  n = np.size(hits)
  assert abs(np.mean(hits) - p) <= 5 * math.sqrt(p * (1 - p) / n), (np.mean(hits), p, n)


def _key_data(n, salt=0):
  """n distinct sample-key datas, as the loader hands them over."""
  return np.stack([np.arange(n, dtype=np.uint32), np.full(n, salt, np.uint32)], axis=1)


def _keys(n, salt=0):
  return jax.random.wrap_key_data(jnp.asarray(_key_data(n, salt)))


def test_crop_scale_ratio_and_flip():
  """Scales lie in [0.08, 1] and log ratios in [log 3/4, log 4/3], up to rounding to whole
  pixels; both follow timm's own sampler (Python's random, fed a different stream); the
  flip rate is 0.5."""
  height, width, n = 120, 160, 4000
  scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
  ours, flips = [], []
  for key_data in _key_data(n):
    draws = host_crop._Draws(key_data)
    ours.append(host_crop.crop_params(draws, height, width, scale, ratio))
    flips.append(draws.random() < 0.5)
  rng = random.Random(0)  # timm's get_params uses the random module's uniform/randint.
  theirs = [host_crop.crop_params(rng, height, width, scale, ratio) for _ in range(n)]
  ours, theirs = np.array(ours, float), np.array(theirs, float)
  for crops in (ours, theirs):
    area = crops[:, 2] * crops[:, 3] / (height * width)
    log_ratio = np.log(crops[:, 3] / crops[:, 2])
    slack = 2 / min(crops[:, 2].min(), crops[:, 3].min())  # one pixel of rounding per side
    assert area.min() >= 0.08 * (1 - slack) and area.max() <= 1
    assert log_ratio.min() >= math.log(3 / 4) - slack
    assert log_ratio.max() <= math.log(4 / 3) + slack
  critical = KS_CRITICAL * math.sqrt(2 / n)
  for column in (lambda c: c[:, 2] * c[:, 3], lambda c: c[:, 3] / c[:, 2], lambda c: c[:, 0]):
    assert stats.ks_2samp(column(ours), column(theirs)).statistic < critical
  _assert_rate(flips, 0.5)


def test_erasing_rate_area_and_aspect():
  n, size = 4000, 32
  erase = jax.jit(
      jax.vmap(lambda key: jax_ops.random_erase(jnp.full(
          (size, size, 3), 100.0), draws.draw_erase(key, size, size, 0.25))))
  erased = np.asarray(erase(_keys(n))) != 100.0
  boxes = erased.any(axis=-1)
  hit = boxes.any(axis=(1, 2))
  # Ten failed attempts cost less than 1e-10 of the rate at this size: ignored.
  _assert_rate(hit, 0.25)
  heights = boxes[hit].any(axis=2).sum(axis=1)
  widths = boxes[hit].any(axis=1).sum(axis=1)
  area = heights * widths / size**2
  assert np.array_equal(boxes[hit].sum(axis=(1, 2)), heights * widths)  # one rectangle
  assert area.min() >= 0.02 * 0.5 and area.max() <= 1 / 3 * 1.5  # up to pixel rounding
  assert np.all(np.log(heights / widths) <= -math.log(0.3) + 2 / np.minimum(heights, widths))


@pytest.fixture(scope='module')
def draw_pairs():

  def draw(keys, **kwargs):
    return jax.jit(jax.vmap(lambda key: mix.draw_pair(key, 32, 32, **kwargs)))(keys)

  return draw


def test_mixup_lambda_is_beta(draw_pairs):
  n = 20000
  lam, _, use_cutmix = draw_pairs(_keys(n), mixup_alpha=0.8, cutmix_alpha=0.0, switch_prob=0.5,
                                  prob=1.0)
  assert not np.asarray(use_cutmix).any()
  statistic = stats.kstest(np.asarray(lam), stats.beta(0.8, 0.8).cdf).statistic
  assert statistic < KS_CRITICAL / math.sqrt(n)


def test_switch_and_mix_probabilities(draw_pairs):
  n = 8000
  lam, _, use_cutmix = draw_pairs(_keys(n, 1), mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5,
                                  prob=0.6)
  _assert_rate(np.asarray(use_cutmix), 0.5)
  _assert_rate(np.asarray(lam) < 1, 0.6)


def test_cutmix_box_area_is_one_minus_lambda_as_timm(draw_pairs):
  """The box covers exactly 1 - lambda (lambda corrected after clipping), and the
  corrected lambdas follow timm's cutmix_bbox_and_lam fed numpy's Beta draws."""
  n, size = 6000, 32
  lam, (top, bottom, left, right), use_cutmix = draw_pairs(_keys(n, 2), mixup_alpha=0.0,
                                                           cutmix_alpha=1.0, switch_prob=0.5,
                                                           prob=1.0)
  assert np.asarray(use_cutmix).all()
  area = np.asarray((bottom - top) * (right - left)) / size**2
  np.testing.assert_allclose(np.asarray(lam), 1 - area, atol=1e-6)
  np.random.seed(0)
  theirs = [
      mixup.cutmix_bbox_and_lam((3, size, size), np.random.beta(1.0, 1.0))[1] for _ in range(n)
  ]
  assert stats.ks_2samp(np.asarray(lam), theirs).statistic < KS_CRITICAL * math.sqrt(2 / n)


def test_rand_augment_layer_draws():
  """Ops uniform over the 15, applied half the time, magnitude N(9, 0.5) clipped to
  [0, 10], sign flipped half the time."""
  n, num_ops = 15000, len(draws.INCREASING_OPS)
  op, magnitude, negate = jax.jit(
      jax.vmap(lambda key: draws.draw_layer(key, num_ops, 0.5, 9.0, 0.5)))(_keys(n, 3))
  op, magnitude = np.asarray(op), np.asarray(magnitude)
  applied = op >= 0
  _assert_rate(applied, 0.5)
  for index in range(num_ops):
    _assert_rate(op[applied] == index, 1 / num_ops)
  _assert_rate(np.asarray(negate), 0.5)
  assert magnitude.min() >= 0 and magnitude.max() <= 10
  _assert_rate(magnitude == 10, stats.norm.sf(2))  # P(N(9, 0.5) >= 10): clipped to 10
  unclipped = magnitude[magnitude < 10]
  assert abs(unclipped.mean()
             - stats.truncnorm.mean(-np.inf, 2, 9, 0.5)) < 5 * 0.5 / math.sqrt(unclipped.size)


def test_uniform_magnitude_when_std_is_infinite():
  n = 4000
  _, magnitude, _ = jax.jit(jax.vmap(lambda key: draws.draw_layer(key, 15, 1.0, 9.0, math.inf)))(
      _keys(n, 4))
  assert stats.kstest(np.asarray(magnitude),
                      stats.uniform(0, 9).cdf).statistic < (KS_CRITICAL / math.sqrt(n))
