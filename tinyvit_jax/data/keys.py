"""The one owner of per-sample randomness.

Everything random about example ``index`` in ``epoch`` (crop, flip, RandAugment,
erasing, the Mixup/CutMix pair draw) is derived from ``sample_key(seed, epoch, index,
repeat)``, ``repeat`` telling apart the views of repeated augmentation (``order``).
The FPD save pass and the student both call this, so a stored teacher row always lines
up with the image the student regenerates, whatever the batch size, device count,
host count or resume point.
"""
import jax
import jax.numpy as jnp
import numpy as np


def epoch_key(seed: int, epoch: int) -> jax.Array:
  """Key of one epoch: drives that epoch's example order."""
  return jax.random.fold_in(jax.random.key(seed), epoch)


def sample_key(seed: int, epoch: int, index, repeat=0) -> jax.Array:
  """Key of example ``index`` (its dataset index, not its position) in ``epoch``.

  ``repeat`` tells apart the views of one example under repeated augmentation.
  ``index`` and ``repeat`` may be traced arrays, so this vmaps over a batch.
  """
  key = jax.random.fold_in(epoch_key(seed, epoch), jnp.uint32(1))  # 0 is the order stream
  return jax.random.fold_in(jax.random.fold_in(key, index), repeat)


def views_key(seed: int, cycle: int) -> jax.Array:
  """Key of cycle ``cycle`` of a bounded store's schedule (``order.stored_epoch``): which
  stored epoch each student epoch of the cycle replays. Its root is epoch 2^32 - 1's key,
  an epoch no run reaches, so it shares no stream with any epoch's."""
  return jax.random.fold_in(epoch_key(seed, 2**32 - 1), cycle)


def order_key(seed: int, epoch: int) -> jax.Array:
  """Key of the epoch's permutation, kept apart from every sample key."""
  return jax.random.fold_in(epoch_key(seed, epoch), jnp.uint32(0))


def augment_streams(key) -> tuple:
  """(RandAugment, colour jitter, erasing, Mixup pair) keys of a sample key.

  Each op draws from its own stream, wherever it runs (device, or host for CPU runs).
  """
  return tuple(jax.random.split(key, 4))


def numpy_generator(key_data) -> np.random.Generator:
  """numpy's Philox keyed by the 64 bits of a key's data (``jax.random.key_data``), for
  the draws made on the host without JAX: the epoch permutation, the host crop and flip,
  the host erasing noise. The same key gives the same stream in every process."""
  hi, lo = (int(word) for word in np.asarray(key_data, np.uint32))
  return np.random.Generator(np.random.Philox(key=(hi << 32) | lo))
