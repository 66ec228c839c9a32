"""The per-image ops on the host, with PIL, from ``draws``: ``jax_ops`` mirrored.

For CPU-only runs (``augment_on='host'``, ``host_mode``): the same drawn arguments,
applied by the PIL calls timm and torchvision make, which are C and ~15x faster on a CPU
than XLA's (benchmarks/RESULTS.md, "Data"). Host and device then differ only where PIL's
float64 and our float32 round apart (the tolerances of tests/test_augment_vs_timm.py),
in AutoContrast, where PIL's table falls one short of the exact one on 0.14% of entries,
and in the erasing noise (``random_erase``).
"""
import numpy as np
from PIL import Image
from PIL import ImageEnhance
from PIL import ImageOps

from tinyvit_jax.data import keys
from tinyvit_jax.data.augment import draws as draws_lib


def _posterize(image, bits):
  """Pillow 13 raises for 0 bits, which timm's PosterizeIncreasing asks for at magnitude
  10; earlier Pillow, and the device op, give black."""
  return ImageOps.posterize(image, bits) if bits else Image.new('RGB', image.size)


def _solarize_add(image, add, threshold=128):
  table = [min(255, v + add) if v < threshold else v for v in range(256)]
  return image.point(table * 3)


def _enhance(enhancer):
  return lambda image, factor: enhancer(image).enhance(factor)


# name -> (image, integer argument) -> image.
LUT_OPS = {
    'AutoContrast': lambda image, arg: ImageOps.autocontrast(image),
    'Equalize': lambda image, arg: ImageOps.equalize(image),
    'Invert': lambda image, arg: ImageOps.invert(image),
    'Posterize': _posterize,
    'PosterizeIncreasing': _posterize,
    'Solarize': ImageOps.solarize,
    'SolarizeIncreasing': ImageOps.solarize,
    'SolarizeAdd': _solarize_add,
}

# name -> (image, factor) -> image.
BLEND_OPS = {
    'Color': _enhance(ImageEnhance.Color),
    'ColorIncreasing': _enhance(ImageEnhance.Color),
    'Contrast': _enhance(ImageEnhance.Contrast),
    'ContrastIncreasing': _enhance(ImageEnhance.Contrast),
    'Brightness': _enhance(ImageEnhance.Brightness),
    'BrightnessIncreasing': _enhance(ImageEnhance.Brightness),
    'Sharpness': _enhance(ImageEnhance.Sharpness),
    'SharpnessIncreasing': _enhance(ImageEnhance.Sharpness),
}

# torchvision's ColorJitter ops on PIL, by index: brightness, contrast, saturation.
_JITTER_ENHANCERS = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)


def apply_arguments(image: Image.Image, op: int, arguments: draws_lib.OpArguments, ops,
                    fill) -> Image.Image:
  """Op ``ops[op]`` (-1: none) with its ``draws.op_arguments`` (numpy) on an RGB image; a
  name in neither table is a warp."""
  if op < 0:
    return image
  name = ops[op]
  if name in LUT_OPS:
    return LUT_OPS[name](image, int(arguments.lut))
  if name in BLEND_OPS:
    return BLEND_OPS[name](image, float(arguments.factor))
  return image.transform(image.size, Image.Transform.AFFINE,
                         tuple(float(m) for m in arguments.matrix), Image.Resampling.BICUBIC,
                         fillcolor=tuple(fill))


def rand_augment(image: Image.Image, drawn_ops, arguments: draws_lib.OpArguments, ops,
                 fill) -> Image.Image:
  """RandAugment's layers (``sample_draws``' 'ops' and 'arguments') on an RGB image."""
  for layer, op in enumerate(drawn_ops):
    image = apply_arguments(image, int(op),
                            draws_lib.OpArguments(*(argument[layer] for argument in arguments)),
                            ops, fill)
  return image


def colour_jitter(image: Image.Image, jitter) -> Image.Image:
  """torchvision ColorJitter on an RGB image, from ``draws.draw_jitter``'s (order,
  factors)."""
  order, factors = jitter
  for which in order:
    image = _JITTER_ENHANCERS[which](image).enhance(float(factors[which]))
  return image


def random_erase(image: np.ndarray, box: draws_lib.EraseBox) -> np.ndarray:
  """timm's RandomErasing, mode 'pixel', in place: N(0, 1) noise in ``box``, drawn in
  float32 by ``keys.numpy_generator`` of the box's noise key data. The law of the
  device's noise, not its values: the host has no JAX generator to spare per image."""
  if box.erase:
    generator = keys.numpy_generator(box.noise_key)
    top, left, height, width = int(box.top), int(box.left), int(box.height), int(box.width)
    image[top:top + height, left:left + width] = generator.standard_normal(
        (height, width, image.shape[2]), np.float32)
  return image
