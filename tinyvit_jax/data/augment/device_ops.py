"""Per-image device ops besides RandAugment: colour jitter, normalisation, random erasing.

Each takes one HWC image and its own key; ``augment`` vmaps them over a batch inside jit.
Colour jitter works on uint8 with PIL's rounding (it is torchvision's ColorJitter on a
PIL image); erasing works on the normalised float image, as timm's RandomErasing.
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from tinyvit_jax import normalisation
from tinyvit_jax.data.augment import uint8_ops


# torchvision's ColorJitter ops on PIL, by index: brightness, contrast, saturation.
_JITTER_DEGENERATES = (uint8_ops.brightness_degenerate, uint8_ops.contrast_degenerate,
                       uint8_ops.colour_degenerate)


def draw_jitter(key, brightness: float, contrast: float, saturation: float):
  """(order of the three ops (3,), factors (3,)) of torchvision's ColorJitter.

  Each factor is uniform in [max(0, 1 - s), 1 + s]; torchvision permutes the three enhance
  ops, so the order is random too. A strength of 0 gives factor 1, an exact no-op. Key
  split: (order, brightness, contrast, saturation).
  """
  order_key, *factor_keys = jax.random.split(key, 4)
  factors = jnp.stack([
      jax.random.uniform(k, (), jnp.float32, max(0.0, 1.0 - s), 1.0 + s)
      for k, s in zip(factor_keys, (brightness, contrast, saturation))])
  return jax.random.permutation(order_key, 3), factors


def colour_jitter(image, key, brightness: float, contrast: float, saturation: float):
  """torchvision ColorJitter(brightness, contrast, saturation) on a uint8 image."""
  order, factors = draw_jitter(key, brightness, contrast, saturation)
  for which in order:
    degenerate = jax.lax.switch(which, _JITTER_DEGENERATES, image)
    image = uint8_ops.blend(degenerate, image, factors[which])
  return image


def normalise(image, mean=normalisation.IMAGENET_MEAN, std=normalisation.IMAGENET_STD):
  """uint8 -> float32 ``(x / 255 - mean) / std``, as ToTensor + Normalize."""
  scaled = image.astype(jnp.float32) / 255.0
  return (scaled - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


ERASE_ATTEMPTS = 10


class EraseBox(NamedTuple):
  """Where erasing writes noise: rows [top, top + height), columns [left, left + width),
  if ``erase``; ``noise_key`` draws the noise."""
  erase: jax.Array
  top: jax.Array
  left: jax.Array
  height: jax.Array
  width: jax.Array
  noise_key: jax.Array


def draw_erase(key, height: int, width: int, prob: float, min_area: float = 0.02,
               max_area: float = 1 / 3, min_aspect: float = 0.3) -> EraseBox:
  """timm's RandomErasing box, one per image: with probability ``prob``, a box of area
  fraction uniform in [min_area, max_area] and log-uniform aspect in
  [min_aspect, 1 / min_aspect]. The first of ten attempts whose box fits strictly inside
  is used, as timm; all ten are drawn at once so the shapes stay static. Key split:
  (apply, area, aspect, top, left, noise).
  """
  apply_key, area_key, aspect_key, top_key, left_key, noise_key = jax.random.split(key, 6)
  area = (jax.random.uniform(area_key, (ERASE_ATTEMPTS,), jnp.float32, min_area, max_area)
          * height * width)
  log_aspect = jax.random.uniform(aspect_key, (ERASE_ATTEMPTS,), jnp.float32,
                                  math.log(min_aspect), -math.log(min_aspect))
  aspect = jnp.exp(log_aspect)
  box_h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  box_w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (box_w < width) & (box_h < height)
  first = jnp.argmax(fits)
  box_h, box_w = box_h[first], box_w[first]
  top = jnp.floor(jax.random.uniform(top_key) * (height - box_h + 1)).astype(jnp.int32)
  left = jnp.floor(jax.random.uniform(left_key) * (width - box_w + 1)).astype(jnp.int32)
  erase = fits.any() & (jax.random.uniform(apply_key) < prob)
  return EraseBox(erase, top, left, box_h, box_w, noise_key)


def random_erase(image, key, prob: float, **box_settings):
  """timm's RandomErasing, mode 'pixel', on a normalised HWC image: the ``draw_erase`` box
  becomes per-pixel N(0, 1) noise (the normalised image's scale)."""
  h, w, _ = image.shape
  box = draw_erase(key, h, w, prob, **box_settings)
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  inside = ((rows >= box.top) & (rows < box.top + box.height) & (cols >= box.left)
            & (cols < box.left + box.width))
  noise = jax.random.normal(box.noise_key, image.shape, image.dtype)
  return jnp.where((inside & box.erase)[..., None], noise, image)
