"""Host half of augmentation: decoded image -> fixed-size uint8 crop, in loader workers.

RandomResizedCrop and the flip run here, with PIL, because they change the image size:
after them every example has the same shape, so the batch stacks and the device half
(``jax_ops``, ``mix``) runs vmapped inside jit. Doing the crop on the host also sends a
224x224 uint8 crop to the device instead of the full image.

The workers need no accelerator and run no JAX: crop and flip parameters come from
``keys.numpy_generator`` of the sample key's data (which the loader hands each
transform), as the epoch permutation does. Only ``Generator.random()`` doubles are read,
a stream numpy keeps stable, and each is mapped to timm's draw by hand (``uniform``:
a + (b - a) u, ``randint(a, b)``: a + floor(u (b - a + 1))). The same key gives the same
crop in every process. Draw order: the crop's attempts, then the flip.
"""
import dataclasses
import io
import math

import numpy as np
from PIL import Image

from tinyvit_jax.data import keys
from tinyvit_jax.data.sources import decode

INTERPOLATIONS = {'bicubic': Image.Resampling.BICUBIC, 'bilinear': Image.Resampling.BILINEAR}


class _Draws:
  """timm's ``random.uniform`` / ``random.randint`` over a keyed numpy stream."""

  def __init__(self, key_data):
    self._generator = keys.numpy_generator(key_data)

  def random(self) -> float:
    return float(self._generator.random())

  def uniform(self, a: float, b: float) -> float:
    return a + (b - a) * self.random()

  def randint(self, a: int, b: int) -> int:
    """An integer in [a, b], both ends included, as Python's random.randint."""
    return a + math.floor(self.random() * (b - a + 1))


def crop_params(draws, height: int, width: int, scale, ratio) -> tuple[int, int, int, int]:
  """(top, left, crop height, crop width) by timm's RandomResizedCrop rule.

  Ten attempts at an area fraction uniform in ``scale`` and a log-uniform aspect ratio
  (width / height) in ``ratio``; the first crop that fits is placed uniformly. If none
  fits, the centred crop of the whole image, clamped to the ratio range.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = draws.uniform(*scale) * area
    aspect = math.exp(draws.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if w <= width and h <= height:
      return draws.randint(0, height - h), draws.randint(0, width - w), h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    w, h = int(round(height * max(ratio))), height
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(image: np.ndarray, top: int, left: int, h: int, w: int, size: int,
                 interpolation: str) -> np.ndarray:
  """Crop then resize to ``size`` x ``size`` with PIL, as torchvision's resized_crop."""
  return np.asarray(_crop_resize(Image.fromarray(image), top, left, h, w, size, interpolation))


def _crop_resize(image: Image.Image, top: int, left: int, h: int, w: int, size: int,
                 interpolation: str) -> Image.Image:
  crop = image.crop((left, top, left + w, top + h))
  return crop.resize((size, size), INTERPOLATIONS[interpolation])


def draft_reduction(h: int, w: int, size: int) -> int:
  """The largest JPEG decode reduction (8, 4, 2, else 1) that leaves an h x w crop at least
  ``size`` pixels a side, so the resize after it still only shrinks."""
  return next((r for r in (8, 4, 2) if min(h, w) >= r * size), 1)


def _encoded_crop(data: bytes, draws, size: int, scale, ratio, interpolation: str,
                  draft: bool) -> Image.Image:
  """RandomResizedCrop of encoded bytes. The crop is drawn from the header's size; with
  ``draft``, libjpeg decodes at 1/r scale (``draft_reduction``) and the resize reads the
  crop box scaled by 1/r, in fractional pixels."""
  with decode.decoding(), Image.open(io.BytesIO(data)) as encoded:
    width, height = encoded.size
    top, left, h, w = crop_params(draws, height, width, scale, ratio)
    reduction = draft_reduction(h, w, size) if draft else 1
    if reduction > 1:
      encoded.draft('RGB', (width // reduction, height // reduction))
    image = encoded.convert('RGB') if encoded.mode != 'RGB' else encoded
    image.load()
    if reduction > 1:
      box = tuple(edge / reduction for edge in (left, top, left + w, top + h))
      return image.resize((size, size), INTERPOLATIONS[interpolation], box=box)
    return _crop_resize(image, top, left, h, w, size, interpolation)


@dataclasses.dataclass(frozen=True)
class TrainCrop:
  """Loader transform ``(record, key_data) -> dict(image)`` for training.

  ``image``: the RandomResizedCrop of the record's image, flipped left-right with
  probability ``hflip``, uint8 (size, size, 3). The record's image is decoded
  pixels, or encoded bytes (sources built with ``decode=False``), which skips copies and
  allows ``draft``: JPEG decoding at 1/2, 1/4 or 1/8 scale when the crop is at least that
  many times the output size (timm always decodes in full; off by default for parity).
  """
  size: int
  scale: tuple = (0.08, 1.0)
  ratio: tuple = (3 / 4, 4 / 3)
  hflip: float = 0.5
  interpolation: str = 'bicubic'
  draft: bool = False

  def crop(self, image, key_data: np.ndarray) -> Image.Image:
    """The flipped crop of decoded pixels or encoded bytes, as a PIL image."""
    draws = _Draws(key_data)
    if isinstance(image, bytes):
      crop = _encoded_crop(image, draws, self.size, self.scale, self.ratio, self.interpolation,
                           self.draft)
    else:
      top, left, h, w = crop_params(draws, image.shape[0], image.shape[1], self.scale, self.ratio)
      crop = _crop_resize(Image.fromarray(image), top, left, h, w, self.size, self.interpolation)
    if draws.random() < self.hflip:
      crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop

  def __call__(self, record: dict, key_data: np.ndarray) -> dict:
    return dict(image=np.asarray(self.crop(record['image'], key_data)))


@dataclasses.dataclass(frozen=True)
class EvalResizeCrop:
  """Loader transform for evaluation: timm's eval resize and centre crop.

  The shorter side goes to ``floor(size / crop_pct)``, the longer one keeps the aspect
  (truncated, as torchvision), then the centred ``size`` x ``size`` crop (offsets
  rounded, as torchvision). Needs no key.
  """
  size: int
  crop_pct: float = 0.875
  interpolation: str = 'bicubic'

  def __call__(self, record: dict, key_data: np.ndarray) -> dict:
    del key_data
    image = record['image']
    height, width = image.shape[:2]
    short = math.floor(self.size / self.crop_pct)
    if width <= height:
      new_w, new_h = short, int(short * height / width)
    else:
      new_w, new_h = int(short * width / height), short
    resized = Image.fromarray(image).resize((new_w, new_h), INTERPOLATIONS[self.interpolation])
    top = int(round((new_h - self.size) / 2.0))
    left = int(round((new_w - self.size) / 2.0))
    return dict(image=np.asarray(resized)[top:top + self.size, left:left + self.size])
