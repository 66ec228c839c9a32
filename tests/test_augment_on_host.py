"""``augment_on='host'`` (PIL in the workers) against the device path on the same keys.

Tolerances, in uint8 levels (LSB) of the normalised output, without erasing: overall mean
<= 0.002 and per image mean <= 0.05, with at least 80% of images bit-identical. The
differences are PIL's float64 against our float32 (one LSB, rarely) and PIL's
AutoContrast table, which a second layer (Equalize, Solarize) can widen to a few levels;
measured over 200 images at 64px: mean 0.0002, worst image 0.02, 86% identical.
Erasing: the same box, other N(0, 1) noise inside it.
"""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tinyvit_jax import normalisation
from tinyvit_jax.data import augment
from tinyvit_jax.data import keys
from tinyvit_jax.data.augment import draws
from tinyvit_jax.data.augment import host_crop
from tinyvit_jax.data.augment import host_mode
from tinyvit_jax.data.augment import jax_ops
from tinyvit_jax.data.augment import pil_ops
from tinyvit_jax.data.sources import synthetic

SIZE, COUNT = 48, 120
LSB = 1 / 255 / min(normalisation.IMAGENET_STD)


def _key_data(count, seed=1):
  return [np.asarray(jax.random.key_data(keys.sample_key(seed, 0, i))) for i in range(count)]


def _both(count, **settings):
  """(host images, device images, key data) of ``count`` synthetic examples, each through
  its device half (the host path's only unpacks and normalises without mixing)."""
  settings = dict(image_size=SIZE, mixup_alpha=0.0, cutmix_alpha=0.0, **settings)
  host = augment.make_train_augment(augment_on='host', **settings)
  device = augment.make_train_augment(**settings)
  source = synthetic.SyntheticSource(count, image_size=64)
  key_data = _key_data(count)
  packed = np.stack([host.host(source[i], key_data[i])['image'] for i in range(count)])
  assert packed.dtype == np.float16
  on_host, _ = jax.jit(host.device)(packed, np.stack(key_data), jnp.zeros((count, 10)))
  crops = [device.host(source[i], key_data[i]) for i in range(count)]
  on_device, _ = jax.jit(device.device)(np.stack([c['image'] for c in crops]), np.stack(key_data),
                                        jnp.zeros((count, 10)))
  return np.asarray(on_host), np.asarray(on_device), key_data


def test_host_matches_device_without_erasing():
  on_host, on_device, _ = _both(COUNT, erase_prob=0.0, color_jitter=0.4)
  levels = np.round(np.abs(on_host - on_device) / LSB).reshape(COUNT, -1)
  assert levels.mean() <= 0.002
  assert levels.mean(axis=1).max() <= 0.05
  assert (levels.max(axis=1) == 0).mean() >= 0.8


def test_host_erases_the_device_box_with_unit_noise():
  settings = dict(erase_prob=1.0, rand_augment=None)
  on_host, on_device, key_data = _both(16, **settings)
  unerased, _, _ = _both(16, erase_prob=0.0, rand_augment=None)
  noise = []
  for image_host, image_device, plain, data in zip(on_host, on_device, unerased, key_data):
    erase_key = keys.augment_streams(jax.random.wrap_key_data(data))[2]
    box = draws.draw_erase(erase_key, SIZE, SIZE, 1.0)
    inside = np.zeros((SIZE, SIZE), bool)
    inside[int(box.top):int(box.top + box.height), int(box.left):int(box.left + box.width)] = True
    assert bool(box.erase) and inside.any()
    # Inside a bigger jit XLA may rewrite normalise's division: 1 ulp apart.
    np.testing.assert_allclose(image_host[~inside], plain[~inside], rtol=0, atol=1e-6)
    np.testing.assert_allclose(image_device[~inside], plain[~inside], rtol=0, atol=1e-6)
    assert not np.array_equal(image_host[inside], image_device[inside])
    noise.append(image_host[inside].ravel())
  noise = np.concatenate(noise)
  assert abs(noise.mean()) < 5 / np.sqrt(noise.size) and abs(noise.std() - 1) < 0.02


def test_packed_pixels_unpack_normalised_and_noise_as_itself():
  """Every uint8 value through ``pack`` comes out within 1e-6 of ``jax_ops.normalise``
  (a multiply-add against two divisions: a few ulp); noise written into the float16 image
  comes out as its float16 value."""
  values = np.arange(256, dtype=np.uint8)
  image = np.stack([values, values[::-1], np.roll(values, 7)], -1)[None]
  packed = host_mode.pack(image)
  unpack = jax.jit(host_mode.unpack_normalised, static_argnums=(1, 2))
  mean, std = normalisation.IMAGENET_MEAN, normalisation.IMAGENET_STD
  np.testing.assert_allclose(unpack(packed, mean, std),
                             jax.jit(jax_ops.normalise)(image), rtol=0, atol=1e-6)
  noise = np.random.default_rng(0).standard_normal((1, 256, 3)).astype(np.float32) * 3
  packed[:] = noise
  np.testing.assert_array_equal(unpack(packed, mean, std), noise.astype(np.float16))


@pytest.mark.parametrize('ops', [draws.INCREASING_OPS, draws.OPS], ids=['inc1', 'inc0'])
def test_each_pil_op_on_the_shared_arguments_matches_the_device_op(ops):
  """Every op through ``op_arguments``: PIL on the host against jax on the device, within
  the vs-timm tolerances (AutoContrast max 1 LSB, mean 0.03; the rest max 1, mean 0.01)."""
  image = np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)
  fill = (124, 116, 104)
  arguments_of = jax.jit(lambda op, m, negate: draws.op_arguments(op, m, negate, ops, 32, 40))
  apply = jax.jit(
      lambda image, op, arguments: jax_ops.apply_arguments(image, op, arguments, ops, fill))
  for index, name in enumerate(ops):
    for magnitude, negate in ((3.3, False), (9.0, True), (10.0, False)):
      arguments = arguments_of(index, magnitude, negate)
      host = pil_ops.apply_arguments(Image.fromarray(image), index, jax.device_get(arguments), ops,
                                     fill)
      difference = np.abs(
          np.asarray(host, np.int32) - np.asarray(apply(image, index, arguments), np.int32))
      mean_limit = 0.03 if name == 'AutoContrast' else 0.01
      assert difference.max() <= 1 and difference.mean() <= mean_limit, (name, magnitude)


def test_encoded_bytes_crop_like_decoded_pixels(tmp_path):
  """A source with ``decode=False`` hands over bytes; without draft the crop has the bits
  of the decoded pixels' crop."""
  image = synthetic.SyntheticSource(1, image_size=120)[0]['image']
  path = tmp_path / 'image.jpg'
  Image.fromarray(image).save(path, quality=90)
  data = path.read_bytes()
  decoded = np.asarray(Image.open(path).convert('RGB'))
  crop = host_crop.TrainCrop(32)
  for key_data in _key_data(10):
    np.testing.assert_array_equal(
        crop(dict(image=data), key_data)['image'],
        crop(dict(image=decoded), key_data)['image'])


def test_draft_decodes_small_only_when_the_crop_is_large_and_stays_close(tmp_path):
  assert host_crop.draft_reduction(447, 900, 224) == 1
  assert host_crop.draft_reduction(448, 900, 224) == 2
  assert host_crop.draft_reduction(1800, 1792, 224) == 8
  image = synthetic.SyntheticSource(1, image_size=1024)[0]['image']
  path = tmp_path / 'image.jpg'
  Image.fromarray(image).save(path, quality=90)
  data = path.read_bytes()
  full = host_crop.TrainCrop(64, scale=(0.5, 1.0))
  draft = host_crop.TrainCrop(64, scale=(0.5, 1.0), draft=True)
  for key_data in _key_data(5):
    a = full(dict(image=data), key_data)['image'].astype(np.int32)
    b = draft(dict(image=data), key_data)['image'].astype(np.int32)
    assert not np.array_equal(a, b)  # the crop is >= 4x the output: decoded at 1/4
    assert np.abs(a - b).mean() <= 3.0


def test_host_augmentation_is_the_same_in_another_process():
  source = synthetic.SyntheticSource(4, image_size=48)
  key_data = np.array([[1, 2], [3, 4], [5, 6], [7, 8]], np.uint32)
  host = augment.make_train_augment(image_size=SIZE, augment_on='host').host
  here = np.stack([host(source[i], key_data[i])['image'] for i in range(4)])
  script = ('import sys, numpy as np\n'
            'from tinyvit_jax.data import augment\n'
            'from tinyvit_jax.data.sources import synthetic\n'
            'source = synthetic.SyntheticSource(4, image_size=48)\n'
            f'key_data = np.array({key_data.tolist()}, np.uint32)\n'
            f'host = augment.make_train_augment(image_size={SIZE}, augment_on="host").host\n'
            'out = np.stack([host(source[i], key_data[i])["image"] for i in range(4)])\n'
            'sys.stdout.buffer.write(out.tobytes())\n')
  there = subprocess.run([sys.executable, '-c', script], capture_output=True, check=True).stdout
  np.testing.assert_array_equal(np.frombuffer(there, np.float16).reshape(here.shape), here)


def test_host_mode_device_half_unpacks_then_mixes_pairs():
  pipeline = augment.make_train_augment(image_size=8, augment_on='host')
  rng = np.random.default_rng(0)
  packed = host_mode.pack(rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
  packed[:, 2:5, 1:6] = rng.standard_normal((4, 3, 5, 3))  # an erased box
  images = np.asarray(
      host_mode.unpack_normalised(packed, normalisation.IMAGENET_MEAN, normalisation.IMAGENET_STD))
  targets = np.eye(4, dtype=np.float32)
  key_data = np.stack(_key_data(4))
  mixed, mixed_targets = jax.jit(pipeline.device)(packed, key_data, targets)
  np.testing.assert_allclose(mixed_targets.sum(axis=1), 1.0, rtol=1e-6)
  assert not np.array_equal(mixed, images)
  # Each output is a blend or a cut of its pair: within the pair's range, pixel by pixel.
  for first in (0, 2):
    pair = images[first:first + 2]
    assert (mixed[first:first + 2] >= pair.min(axis=0) - 1e-5).all()
    assert (mixed[first:first + 2] <= pair.max(axis=0) + 1e-5).all()
  with pytest.raises(ValueError, match='augment_on'):
    augment.make_train_augment(augment_on='gpu')
