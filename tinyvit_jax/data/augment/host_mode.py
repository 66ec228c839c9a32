"""CPU-only runs: every per-image op in the loader workers, with PIL (``augment_on='host'``).

Why: XLA:CPU runs the device half many times slower than PIL runs timm's whole train
transform (RandAugment fuses the bicubic warp into its consumers; random erasing draws
noise for the whole image, erased or not; benchmarks/RESULTS.md, "Data"). On an
accelerator the device half is the better place.

Same draws: the parameters come from the device's own ``draws.sample_draws``, jitted on
the worker's CPU into one uint32 vector (one transfer per image, not one per draw), and
``pil_ops`` applies them as ``jax_ops`` does on the device, so a host image is the device
image up to PIL's float64 against our float32 rounding. The one exception is the erasing
noise (``pil_ops.random_erase``): same N(0, 1) law, other values. FPD stores must
therefore be replayed with the same ``augment_on`` (it is part of the augmentation
config).

Output: the augmented uint8 pixels and the erasing noise packed in one float16 image
(``pack``): a pixel ``p`` is stored as ``PIXEL_OFFSET + p`` (float16 holds 1024..1279
exactly), a noise value as itself (|noise| < 512 always; float16 keeps 11 significant
bits, 2^-11 relative, far below a pixel level's 0.017). The device half
(``augment.host_augmented_images``) unpacks and normalises inside the jitted step, then
mixes pairs. Half the bytes of float32 to copy out of the workers, and no per-image
normalising there (benchmarks/RESULTS.md, "Data").
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from tinyvit_jax.data.augment import draws as draws_lib
from tinyvit_jax.data.augment import host_crop
from tinyvit_jax.data.augment import pil_ops

PIXEL_OFFSET = 1024
_PIXEL_BITS = np.uint16(0x6400)  # float16 bits of 1024: exponent 10, spacing 1 up to 2048


def draw_tree(key_data, *, size: int, rand_augment: tuple | None, color_jitter: tuple,
              erase_prob: float) -> dict:
  """``draws.sample_draws`` of a sample's key data (2,) uint32, the erasing noise key as
  its data. ``rand_augment``: the settings as sorted (name, value) items (hashable)."""
  drawn = draws_lib.sample_draws(jax.random.wrap_key_data(key_data), size,
                                 color_jitter=color_jitter, erase_prob=erase_prob,
                                 rand_augment=None if rand_augment is None else dict(rand_augment))
  if 'erase' in drawn:
    drawn['erase'] = drawn['erase']._replace(
        noise_key=jax.random.key_data(drawn['erase'].noise_key))
  return drawn


def _as_words(leaf):
  """A 32-bit or bool leaf as uint32 words, bit for bit."""
  if leaf.dtype == jnp.bool_:
    return leaf.astype(jnp.uint32).ravel()
  return jax.lax.bitcast_convert_type(leaf, jnp.uint32).ravel()


@functools.partial(jax.jit, static_argnames=('settings',))
def _packed_draws(key_data, settings: tuple):
  return jnp.concatenate(
      [_as_words(leaf) for leaf in jax.tree.leaves(draw_tree(key_data, **dict(settings)))])


@functools.lru_cache(maxsize=8)
def _layout(settings: tuple):
  """(tree structure, [(shape, dtype)]) of ``draw_tree``'s leaves under ``settings``."""
  shapes = jax.eval_shape(functools.partial(draw_tree, **dict(settings)),
                          jax.ShapeDtypeStruct((2,), jnp.uint32))
  leaves, treedef = jax.tree.flatten(shapes)
  return treedef, [(leaf.shape, np.dtype(leaf.dtype)) for leaf in leaves]


def draw(key_data, **settings) -> dict:
  """``draw_tree`` as numpy arrays, computed in one jitted call and one transfer."""
  settings = tuple(sorted(settings.items()))
  treedef, layout = _layout(settings)
  if not layout:
    return {}
  words = np.asarray(_packed_draws(np.asarray(key_data, np.uint32), settings))
  leaves, start = [], 0
  for shape, dtype in layout:
    count = int(np.prod(shape))
    chunk = words[start:start + count]
    leaves.append((chunk.astype(bool) if dtype == bool else chunk.view(dtype)).reshape(shape))
    start += count
  return jax.tree.unflatten(treedef, leaves)


def pack(pixels: np.ndarray) -> np.ndarray:
  """uint8 pixels -> the float16 transport image (``PIXEL_OFFSET + p``, exact)."""
  return (pixels + _PIXEL_BITS).view(np.float16)


def unpack_normalised(images, mean, std):
  """Transport images (..., 3) float16 -> float32: pixels normalised, erased pixels as
  their noise.

  Normalising is one multiply-add per value, ``p / (255 std) - mean / std``, within 1e-6 of
  ``jax_ops.normalise``'s ``(p / 255 - mean) / std``: XLA:CPU fuses the unpacking
  into each of Mixup's reads, where the two divisions doubled the device half's time.
  """
  values = images.astype(jnp.float32)
  scale = jnp.asarray([1 / (255 * s) for s in std], jnp.float32)
  offset = jnp.asarray([-m / s for m, s in zip(mean, std)], jnp.float32)
  return jnp.where(values >= PIXEL_OFFSET / 2, (values - PIXEL_OFFSET) * scale + offset, values)


@dataclasses.dataclass(frozen=True)
class TrainOnHost:
  """Loader transform ``(record, key_data) -> dict(image float16 (size, size, 3))``:
  crop and flip (``crop``), RandAugment, colour jitter and erasing; ``pack``'s layout.

  ``rand_augment``: ``draws.parse_spec``'s settings or None; the rest as
  ``augment.make_train_augment``'s config.
  """
  crop: host_crop.TrainCrop
  rand_augment: dict | None
  color_jitter: tuple
  erase_prob: float
  fill: tuple

  def __call__(self, record: dict, key_data: np.ndarray) -> dict:
    settings = None if self.rand_augment is None else tuple(sorted(self.rand_augment.items()))
    draws = draw(key_data, size=self.crop.size, rand_augment=settings,
                 color_jitter=self.color_jitter, erase_prob=self.erase_prob)
    image = self.crop.crop(record['image'], key_data)
    if 'ops' in draws:
      image = pil_ops.rand_augment(image, draws['ops'], draws['arguments'],
                                   self.rand_augment['ops'], self.fill)
    if 'jitter' in draws:
      image = pil_ops.colour_jitter(image, draws['jitter'])
    packed = pack(np.asarray(image))
    if 'erase' in draws:
      pil_ops.random_erase(packed, draws['erase'])
    return dict(image=packed)
