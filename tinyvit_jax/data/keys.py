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


def order_key(seed: int, epoch: int) -> jax.Array:
  """Key of the epoch's permutation, kept apart from every sample key."""
  return jax.random.fold_in(epoch_key(seed, epoch), jnp.uint32(0))


def augment_streams(key) -> tuple:
  """(RandAugment, colour jitter, erasing, Mixup pair) keys of a sample key.

  Each op draws from its own stream, wherever it runs (device, or host for CPU runs).
  """
  return tuple(jax.random.split(key, 4))
