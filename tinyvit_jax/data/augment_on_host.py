"""CPU-only runs: every per-image op in the loader workers, with PIL (``augment_on='host'``).

Why: XLA:CPU runs the device half at ~31 ms per 224px image (RandAugment ~19.5 ms: it
fuses the bicubic warp into its consumers; random erasing ~6 ms: it draws noise for the
whole image, erased or not), while PIL runs timm's whole train transform in ~2.5 ms
(benchmarks/RESULTS.md, "Data"). On an accelerator the device half is the better place.

Same draws: the parameters come from the device's own functions (``keys.augment_streams``,
``randaugment.layer_arguments``, ``augment_device.draw_jitter`` and ``draw_erase``), jitted
on the worker's CPU, so a host image is the device image up to PIL's float64 against our
float32 rounding (``randaugment_pil``). The one exception is the erasing noise: drawn here
for the box only, by numpy's Philox keyed by the box's noise key, it has the same N(0, 1)
law as the device's but other values. FPD stores must therefore be replayed with the same
``augment_on`` (it is part of the augmentation config).

Output: the normalised float32 image (as timm's transform hands over), so the device
half only mixes pairs (``augment.mixed_images``).
"""
import dataclasses
import functools

import jax
import numpy as np
from PIL import Image
from PIL import ImageEnhance

from tinyvit_jax.data import augment_device
from tinyvit_jax.data import augment_host
from tinyvit_jax.data import keys
from tinyvit_jax.data import randaugment
from tinyvit_jax.data import randaugment_pil

# torchvision's ColorJitter ops on PIL, by index (augment_device's order).
_JITTER_ENHANCERS = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)


@functools.partial(jax.jit, static_argnames=('size', 'rand_augment', 'color_jitter',
                                             'erase_prob'))
def draw(key_data, *, size: int, rand_augment: tuple | None, color_jitter: tuple,
         erase_prob: float) -> dict:
  """Every per-image parameter of one sample, from its key data (2,) uint32.

  ``rand_augment``: the ``layer_arguments`` settings as sorted (name, value) items.
  """
  rand_augment_key, jitter_key, erase_key, _ = keys.augment_streams(
      jax.random.wrap_key_data(key_data))
  draws = {}
  if rand_augment is not None:
    layers = randaugment.layer_arguments(rand_augment_key, size, size, **dict(rand_augment))
    draws['ops'] = jax.numpy.stack([op for op, _ in layers])
    draws['arguments'] = jax.tree.map(lambda *leaves: jax.numpy.stack(leaves),
                                      *[arguments for _, arguments in layers])
  if any(color_jitter):
    draws['jitter'] = augment_device.draw_jitter(jitter_key, *color_jitter)
  if erase_prob:
    box = augment_device.draw_erase(erase_key, size, size, erase_prob)
    draws['erase'] = box._replace(noise_key=jax.random.key_data(box.noise_key))
  return draws


@functools.lru_cache(maxsize=4)
def normalise_table(mean: tuple, std: tuple) -> np.ndarray:
  """(3, 256) float32: ``augment_device.normalise`` of every uint8 value per channel, so
  host and device normalise to the same bits."""
  values = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None, None], (256, 1, 3))
  normalise = jax.jit(augment_device.normalise, static_argnums=(1, 2))
  return np.ascontiguousarray(np.asarray(normalise(values, mean, std))[:, 0, :].T)


@dataclasses.dataclass(frozen=True)
class TrainOnHost:
  """Loader transform ``(record, key_data) -> dict(image float32 (size, size, 3), key)``:
  crop and flip (``crop``), RandAugment, colour jitter, normalisation and erasing.

  ``rand_augment``: ``randaugment.parse_spec``'s settings or None; the rest as
  ``augment.make_train_augment``'s config.
  """
  crop: augment_host.TrainCrop
  rand_augment: dict | None
  color_jitter: tuple
  mean: tuple
  std: tuple
  erase_prob: float
  fill: tuple

  def __call__(self, record: dict, key_data: np.ndarray) -> dict:
    size = self.crop.size
    settings = None if self.rand_augment is None else tuple(sorted(self.rand_augment.items()))
    draws = jax.device_get(draw(np.asarray(key_data, np.uint32), size=size,
                                rand_augment=settings, color_jitter=self.color_jitter,
                                erase_prob=self.erase_prob))
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
    pixels = np.asarray(image)
    table = normalise_table(tuple(self.mean), tuple(self.std))
    normalised = np.stack([table[c][pixels[..., c]] for c in range(3)], axis=-1)
    if 'erase' in draws and draws['erase'].erase:
      erase_box(normalised, draws['erase'])
    return dict(image=normalised, key=np.asarray(key_data, np.uint32))


def erase_box(image: np.ndarray, box: augment_device.EraseBox):
  """Writes N(0, 1) float32 noise into ``box`` of ``image`` in place, drawn by numpy's
  Philox keyed by the box's noise key data (the construction ``augment_host`` uses)."""
  hi, lo = (int(word) for word in box.noise_key)
  generator = np.random.Generator(np.random.Philox(key=(hi << 32) | lo))
  top, left, height, width = int(box.top), int(box.left), int(box.height), int(box.width)
  image[top:top + height, left:left + width] = generator.standard_normal(
      (height, width, image.shape[2]), np.float32)
