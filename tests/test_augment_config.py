"""Augmentation configs: recipes switch ops on and off; bad settings fail with the setting
named."""
import ml_collections
import numpy as np
import pytest

from tinyvit_jax.data import augment
from tinyvit_jax.data.augment import mix
from tinyvit_jax.data.augment import draws


def test_odd_batch_with_mixing_names_the_batch():
  device = augment.make_train_augment(image_size=8, rand_augment=None).device
  images = np.zeros((7, 8, 8, 3), np.uint8)
  key_data = np.zeros((7, 2), np.uint32)
  with pytest.raises(ValueError, match=r'must be even, but it holds 7 images'):
    device(images, key_data, mix.smooth_one_hot(np.zeros(7, int), 10))


def test_odd_batch_is_fine_without_mixing():
  device = augment.make_train_augment(image_size=8, rand_augment=None, erase_prob=0.0,
                                      mixup_alpha=0.0, cutmix_alpha=0.0).device
  images, targets = device(np.zeros((3, 8, 8, 3), np.uint8), np.zeros((3, 2), np.uint32),
                           np.eye(3, dtype=np.float32))
  assert images.shape == (3, 8, 8, 3) and images.dtype == np.float32
  np.testing.assert_array_equal(targets, np.eye(3))


def test_spec_parses_to_timms_settings():
  assert draws.parse_spec('rand-m9-mstd0.5-inc1') == dict(ops=draws.INCREASING_OPS, num_layers=2,
                                                          prob=0.5, magnitude=9.0,
                                                          magnitude_std=0.5)
  parsed = draws.parse_spec('rand-n3-p0.7-mstd101')
  assert parsed == dict(ops=draws.OPS, num_layers=3, prob=0.7, magnitude=10.0,
                        magnitude_std=float('inf'))


@pytest.mark.parametrize('spec, message', [
    ('rand-m11', r'magnitude 11.0 is outside \[0, 10\]'),
    ('rand-m-1', r'cannot read section'),
    ('rand-p1.5', r'probability 1.5 is outside \[0, 1\]'),
    ('rand-mstd-1', r'cannot read section'),
    ('rand-x3', r"cannot read section 'x3'"),
    ('augmix-m5', r'must start with "rand-"'),
])
def test_bad_rand_augment_spec(spec, message):
  with pytest.raises(ValueError, match=message):
    augment.make_train_augment(rand_augment=spec)


def test_unknown_op_is_named():
  with pytest.raises(ValueError, match=r"\['Cutout'\] are not known"):
    draws.check_kwargs(ops=('Rotate', 'Cutout'))


@pytest.mark.parametrize('setting, message', [
    (dict(erase_prob=1.5), r'erase_prob=1.5 is a probability'),
    (dict(hflip=-0.1), r'hflip=-0.1 is a probability'),
    (dict(switch_prob=2), r'switch_prob=2 is a probability'),
    (dict(mix_prob=-1), r'mix_prob=-1 is a probability'),
    (dict(mixup_alpha=-0.8), r'must be >= 0'),
    (dict(color_jitter=(0.4, 0.4, 0.4, 0.1)), r'hue is not supported'),
    (dict(color_jitter=-0.4), r'color_jitter=-0.4'),
    (dict(scale=(0.5, 0.1)), r'scale=\(0.5, 0.1\)'),
    (dict(ratio=(0, 1)), r'ratio=\(0, 1\)'),
    (dict(interpolation='random'), r"interpolation='random'"),
    (dict(image_size=0), r'image_size=0'),
    (dict(re_prob=0.25), r"Unknown augmentation settings \['re_prob'\]"),
])
def test_bad_train_setting_is_named(setting, message):
  with pytest.raises(ValueError, match=message):
    augment.make_train_augment(**setting)


def test_bad_eval_setting_is_named():
  with pytest.raises(ValueError, match=r'crop_pct=1.2'):
    augment.make_eval_augment(crop_pct=1.2)


def test_config_dict_and_overrides():
  """A ConfigDict recipe, overridden by keywords; the host transform carries the crop."""
  config = ml_collections.ConfigDict(dict(image_size=64, hflip=0.0))
  pipeline = augment.make_train_augment(config, image_size=32)
  assert pipeline.host.size == 32 and pipeline.host.hflip == 0.0
  evaluation = augment.make_eval_augment(dict(image_size=16, crop_pct=1.0))
  out = evaluation.host(dict(image=np.zeros((20, 30, 3), np.uint8)), None)
  assert out['image'].shape == (16, 16, 3)
  np.testing.assert_allclose(
      evaluation.device(np.full((1, 2, 2, 3), 255, np.uint8))[0, 0, 0],
      (1 - np.array([0.485, 0.456, 0.406])) / [0.229, 0.224, 0.225], rtol=1e-6)
