"""RandAugment's ops with PIL, on the host, from ``randaugment.op_arguments``.

The host twin of ``randaugment.apply_arguments`` for CPU-only runs (``host_mode``):
the same drawn arguments, applied by the PIL calls timm makes, which are C and ~15x
faster on a CPU than XLA's (see ``host_mode``). Host and device then differ only
where PIL's float64 and our float32 round apart (the tolerances of
tests/test_augment_vs_timm.py), and in AutoContrast, where PIL's table falls one short
of the exact one on 0.14% of entries.
"""
from PIL import Image
from PIL import ImageEnhance
from PIL import ImageOps


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

def apply_arguments(image: Image.Image, name: str, lut: int, factor: float, matrix,
                    fill) -> Image.Image:
  """Op ``name`` with its ``op_arguments`` (numpy scalars are fine) on an RGB image; a name
  in neither table is a warp."""
  if name in LUT_OPS:
    return LUT_OPS[name](image, int(lut))
  if name in BLEND_OPS:
    return BLEND_OPS[name](image, float(factor))
  return image.transform(image.size, Image.Transform.AFFINE, tuple(float(m) for m in matrix),
                         Image.Resampling.BICUBIC, fillcolor=tuple(fill))
