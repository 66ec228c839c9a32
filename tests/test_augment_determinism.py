"""An augmented example is a pure function of its key: the same bits whatever the batch,
with or without jit, in any process."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinyvit_jax import target
from tinyvit_jax.data import augment
from tinyvit_jax.data import keys
from tinyvit_jax.data.augment import mix
from tinyvit_jax.data.sources import synthetic

SIZE, BATCH, CLASSES = 32, 8, 10


@pytest.fixture(scope='module')
def train():
  """The full recipe (RandAugment, erasing, Mixup/CutMix) plus colour jitter, jitted once."""
  pipeline = augment.make_train_augment(image_size=SIZE, color_jitter=0.4)
  return pipeline, jax.jit(pipeline.device)


@pytest.fixture(scope='module')
def batch(train):
  """A host batch of epoch 3 of seed 5, as the loader would hand it over."""
  source = synthetic.SyntheticSource(BATCH, num_classes=CLASSES, image_size=48)
  key_data = [np.asarray(jax.random.key_data(keys.sample_key(5, 3, i))) for i in range(BATCH)]
  examples = [train[0].host(source[i], key_data[i]) for i in range(BATCH)]
  images = np.stack([example['image'] for example in examples])
  key_data = np.stack(key_data)
  targets = mix.smooth_one_hot(jnp.arange(BATCH) % CLASSES, CLASSES, 0.1)
  return images, key_data, targets


def test_same_key_same_bits_from_a_pipeline_built_and_traced_anew(train, batch):
  """Another pipeline object from the same settings, traced and jitted on its own: not
  the first one's executable called twice. (Its program is the same, so the suite's
  compilation cache spares a second compile.)"""
  again = augment.make_train_augment(image_size=SIZE, color_jitter=0.4)
  assert again is not train[0]
  first, second = train[1](*batch), jax.jit(again.device)(*batch)
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)


def test_each_pair_alone_gives_the_batch_bits(train, batch):
  """Batch size and composition do not matter: each pair augmented on its own, in a batch
  of 2, gives the bits it gets in the batch of 8."""
  images, targets = train[1](*batch)
  for pair in range(BATCH // 2):
    rows = slice(2 * pair, 2 * pair + 2)
    alone = train[1](*(array[rows] for array in batch))
    np.testing.assert_array_equal(alone[0], images[rows])
    np.testing.assert_array_equal(alone[1], targets[rows])


def test_each_image_alone_gives_the_batch_bits_without_mixing(batch):
  device = jax.jit(
      augment.make_train_augment(image_size=SIZE, mixup_alpha=0.0, cutmix_alpha=0.0).device)
  images, _ = device(*batch)
  for i in range(BATCH):
    alone, _ = device(*(array[i:i + 1] for array in batch))
    np.testing.assert_array_equal(alone[0], images[i])


def test_a_tpus_passes_give_each_image_its_own_key():
  """On a TPU the per-image ops go through the batch in ``augment.TPU_PASSES`` passes;
  each image comes back in its place, made with its own key, as under one vmap."""
  batch = 3 * augment.TPU_PASSES
  images = jnp.arange(batch * 4, dtype=jnp.float32).reshape(batch, 2, 2)
  image_keys = jax.random.split(jax.random.key(0), batch)
  one_image = lambda image, key: image * jax.random.uniform(key)
  with target.compiling_for(target.Target('tpu')):
    passes = jax.jit(lambda *args: augment._each_image(one_image, *args))(images, image_keys)
  np.testing.assert_array_equal(passes, jax.vmap(one_image)(images, image_keys))


def test_jit_and_eager_agree(train, batch):
  pair = tuple(array[:2] for array in batch)
  jitted = train[1](*pair)
  eager = train[0].device(*pair)
  for a, b in zip(jitted, eager):
    np.testing.assert_array_equal(a, b)


def test_host_crop_is_the_same_in_another_process(train):
  source = synthetic.SyntheticSource(4, image_size=48)
  key_data = np.array([[1, 2], [3, 4], [5, 6], [7, 8]], np.uint32)
  here = np.stack([train[0].host(source[i], key_data[i])['image'] for i in range(4)])
  script = ('import sys, numpy as np\n'
            'from tinyvit_jax.data.augment import host_crop\n'
            'from tinyvit_jax.data.sources import synthetic\n'
            'source = synthetic.SyntheticSource(4, image_size=48)\n'
            f'key_data = np.array({key_data.tolist()}, np.uint32)\n'
            f'crop = host_crop.TrainCrop({SIZE})\n'
            'out = np.stack([crop(source[i], key_data[i])["image"] for i in range(4)])\n'
            'sys.stdout.buffer.write(out.tobytes())\n')
  there = subprocess.run([sys.executable, '-c', script], capture_output=True, check=True).stdout
  np.testing.assert_array_equal(np.frombuffer(there, np.uint8).reshape(here.shape), here)
