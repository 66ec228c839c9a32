"""CPU-only runs: every per-image op in the loader workers, with PIL (``augment_on='host'``).

Why: XLA:CPU runs the device half at ~31 ms per 224px image (RandAugment ~19.5 ms: it
fuses the bicubic warp into its consumers; random erasing ~6 ms: it draws noise for the
whole image, erased or not), while PIL runs timm's whole train transform in ~2.5 ms
(benchmarks/RESULTS.md, "Data"). On an accelerator the device half is the better place.

Same draws: the parameters come from the device's own functions (``keys.augment_streams``,
``randaugment.layer_arguments``, ``device_ops.draw_jitter`` and ``draw_erase``), jitted
on the worker's CPU into one uint32 vector (one transfer per image, not one per draw), so
a host image is the device image up to PIL's float64 against our float32 rounding
(``randaugment_pil``). The one exception is the erasing noise: drawn here for the box
only, by numpy's Philox keyed by the box's noise key, it has the same N(0, 1) law as the
device's but other values. FPD stores must therefore be replayed with the same
``augment_on`` (it is part of the augmentation config).

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
from PIL import ImageEnhance

from tinyvit_jax.data import keys
from tinyvit_jax.data.augment import device_ops
from tinyvit_jax.data.augment import host_crop
from tinyvit_jax.data.augment import randaugment
from tinyvit_jax.data.augment import randaugment_pil

# torchvision's ColorJitter ops on PIL, by index (device_ops's order).
_JITTER_ENHANCERS = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)

PIXEL_OFFSET = 1024
_PIXEL_BITS = np.uint16(0x6400)  # float16 bits of 1024: exponent 10, spacing 1 up to 2048


def draw_tree(key_data, *, size: int, rand_augment: tuple | None, color_jitter: tuple,
              erase_prob: float) -> dict:
  """Every per-image parameter of one sample, from its key data (2,) uint32.

  ``rand_augment``: the ``layer_arguments`` settings as sorted (name, value) items.
  """
  rand_augment_key, jitter_key, erase_key, _ = keys.augment_streams(
      jax.random.wrap_key_data(key_data))
  draws = {}
  if rand_augment is not None:
    layers = randaugment.layer_arguments(rand_augment_key, size, size, **dict(rand_augment))
    draws['ops'] = jnp.stack([op for op, _ in layers])
    draws['arguments'] = jax.tree.map(lambda *leaves: jnp.stack(leaves),
                                      *[arguments for _, arguments in layers])
  if any(color_jitter):
    draws['jitter'] = device_ops.draw_jitter(jitter_key, *color_jitter)
  if erase_prob:
    box = device_ops.draw_erase(erase_key, size, size, erase_prob)
    draws['erase'] = box._replace(noise_key=jax.random.key_data(box.noise_key))
  return draws


def _as_words(leaf):
  """A 32-bit or bool leaf as uint32 words, bit for bit."""
  if leaf.dtype == jnp.bool_:
    return leaf.astype(jnp.uint32).ravel()
  return jax.lax.bitcast_convert_type(leaf, jnp.uint32).ravel()


@functools.partial(jax.jit, static_argnames=('settings',))
def _packed_draws(key_data, settings: tuple):
  return jnp.concatenate([_as_words(leaf) for leaf in jax.tree.leaves(
      draw_tree(key_data, **dict(settings)))])


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
  ``device_ops.normalise``'s ``(p / 255 - mean) / std``: XLA:CPU fuses the unpacking
  into each of Mixup's reads, where the two divisions doubled the device half's time.
  """
  values = images.astype(jnp.float32)
  scale = jnp.asarray([1 / (255 * s) for s in std], jnp.float32)
  offset = jnp.asarray([-m / s for m, s in zip(mean, std)], jnp.float32)
  return jnp.where(values >= PIXEL_OFFSET / 2, (values - PIXEL_OFFSET) * scale + offset, values)


@dataclasses.dataclass(frozen=True)
class TrainOnHost:
  """Loader transform ``(record, key_data) -> dict(image float16 (size, size, 3), key)``:
  crop and flip (``crop``), RandAugment, colour jitter and erasing; ``pack``'s layout.

  ``rand_augment``: ``randaugment.parse_spec``'s settings or None; the rest as
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
      names = self.rand_augment['ops']
      for layer, op in enumerate(draws['ops']):
        if op >= 0:
          arguments = [argument[layer] for argument in draws['arguments']]
          image = randaugment_pil.apply_arguments(image, names[op], *arguments, self.fill)
    if 'jitter' in draws:
      order, factors = draws['jitter']
      for which in order:
        image = _JITTER_ENHANCERS[which](image).enhance(float(factors[which]))
    packed = pack(np.asarray(image))
    if 'erase' in draws and draws['erase'].erase:
      erase_box(packed, draws['erase'])
    return dict(image=packed, key=np.asarray(key_data, np.uint32))


def erase_box(image: np.ndarray, box: device_ops.EraseBox):
  """Writes N(0, 1) noise into ``box`` of ``image`` in place, drawn in float32 by
  ``keys.numpy_generator`` of the box's noise key data."""
  generator = keys.numpy_generator(box.noise_key)
  top, left, height, width = int(box.top), int(box.left), int(box.height), int(box.width)
  image[top:top + height, left:left + width] = generator.standard_normal(
      (height, width, image.shape[2]), np.float32)
