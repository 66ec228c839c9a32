"""PIL's uint8 image operations, in jax.numpy, for one HWC RGB image.

timm's RandAugment and torchvision's ColorJitter run PIL on uint8 images, and every PIL
op rounds (mostly truncates) back to uint8. These ops keep PIL's integer arithmetic and
its rounding, so the device augmentation matches timm pixel for pixel, not merely in
distribution (tests/test_augment_vs_timm.py states the tolerances).

Every op takes and returns uint8 ``(H, W, 3)`` and works on one image; batches vmap. Each
op falls in one of three kinds, which ``jax_ops`` relies on:
- a per-channel lookup table (``apply_lut``): invert, posterize, solarize, autocontrast,
  equalize;
- a blend towards a degenerate image (``blend``): colour, contrast, brightness, sharpness;
- an affine warp with bicubic resampling (``affine``): rotate, shear, translate.
Identity parameters (the identity table, factor 1, the identity matrix) return the image
bit for bit.
"""
import jax.numpy as jnp

from tinyvit_jax import target
from tinyvit_jax.data.augment import gather_free as gather_free_ops


def gather_free() -> bool:
  """Whether the ops that gather and scatter take ``gather_free``'s forms: on a TPU, the
  platform compiled for (``target``), where gathers go pixel by pixel."""
  return target.current().platform == 'tpu'


def grey(image):
  """PIL's RGB -> L conversion, ITU-R 601-2 luma in 16-bit fixed point, (H, W) int32."""
  r, g, b = (image[..., c].astype(jnp.int32) for c in range(3))
  return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16


def blend(degenerate, image, factor):
  """``Image.blend(degenerate, image, factor)``: ``degenerate + factor*(image - degenerate)``
  in float32, truncated and clipped to uint8 as PIL does. ``factor`` > 1 extrapolates."""
  degenerate = degenerate.astype(jnp.float32)
  mixed = degenerate + jnp.float32(factor) * (image.astype(jnp.float32) - degenerate)
  return jnp.clip(jnp.floor(mixed), 0, 255).astype(jnp.uint8)


def colour_degenerate(image):
  """ImageEnhance.Color's degenerate: the image through L and back to RGB."""
  return jnp.broadcast_to(grey(image)[..., None], image.shape).astype(jnp.uint8)


def contrast_degenerate(image):
  """ImageEnhance.Contrast's degenerate: flat grey at the rounded mean luma."""
  mean = jnp.floor(jnp.mean(grey(image).astype(jnp.float32)) + 0.5)
  return jnp.full(image.shape, mean, jnp.uint8)


def brightness_degenerate(image):
  """ImageEnhance.Brightness's degenerate: black."""
  return jnp.zeros_like(image)


def smooth(image):
  """``image.filter(ImageFilter.SMOOTH)``, ImageEnhance.Sharpness's degenerate.

  The 3x3 kernel is [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, rounded to nearest; PIL
  leaves the one-pixel border as it was, so sharpness never changes the border.
  """
  image = jnp.asarray(image)
  x = image.astype(jnp.float32)
  h, w, _ = image.shape
  total = 4 * x[1:-1, 1:-1]
  for dy in range(3):
    for dx in range(3):
      total = total + x[dy:dy + h - 2, dx:dx + w - 2]
  inner = jnp.clip(jnp.floor(total / 13 + 0.5), 0, 255).astype(jnp.uint8)
  return image.at[1:-1, 1:-1].set(inner)


def apply_lut(image, lut):
  """``image.point(lut)`` with ``lut`` of shape (3, 256), one table per channel."""
  if gather_free():
    return gather_free_ops.apply_lut(image, lut)
  return jnp.stack([lut[c][image[..., c]] for c in range(3)], axis=-1)


def identity_lut():
  return jnp.broadcast_to(jnp.arange(256, dtype=jnp.uint8), (3, 256))


def invert_lut():
  return 255 - identity_lut()


def posterize_lut(bits):
  """ImageOps.posterize: keep the ``bits`` most significant bits, 0 to 8.

  0 gives black, as PIL did before 13.0; Pillow 13 raises for 0, which timm's
  PosterizeIncreasing asks for at magnitude 10.
  """
  mask = (0xFF << (8 - jnp.asarray(bits, jnp.int32))) & 0xFF
  return (identity_lut().astype(jnp.int32) & mask).astype(jnp.uint8)


def solarize_lut(threshold):
  """ImageOps.solarize: invert every value at or above ``threshold`` (256: none)."""
  values = identity_lut()
  return jnp.where(values < threshold, values, 255 - values)


def solarize_add_lut(add, threshold=128):
  """timm's solarize_add: add ``add`` (saturating) to every value below ``threshold``."""
  values = identity_lut().astype(jnp.int32)
  return jnp.where(values < threshold, jnp.minimum(values + add, 255), values).astype(jnp.uint8)


def _histograms(image):
  """(3, 256) int32 counts of each value per channel."""
  if gather_free():
    return gather_free_ops.histograms(image)
  flat = image.reshape(-1, 3).astype(jnp.int32)
  channel = jnp.broadcast_to(jnp.arange(3), flat.shape)
  return jnp.zeros((3, 256), jnp.int32).at[channel, flat].add(1)


def autocontrast_lut(image):
  """ImageOps.autocontrast (no cutoff): stretch each channel's [min, max] to [0, 255].

  Exact integer arithmetic, ``(v - lo) * 255 // (hi - lo)``. PIL computes the same in
  float64 (``int(v * scale - lo * scale)``), which falls one short on 0.14% of the
  entries over all (lo, hi), where the exact value is an integer.
  """
  histograms = _histograms(image)
  values = jnp.arange(256, dtype=jnp.int32)
  lo = jnp.argmax(histograms > 0, axis=1)[:, None]
  hi = 255 - jnp.argmax(histograms[:, ::-1] > 0, axis=1)[:, None]
  stretched = jnp.clip((values - lo) * 255 // jnp.maximum(hi - lo, 1), 0, 255)
  return jnp.where(hi > lo, stretched.astype(jnp.uint8), identity_lut())


def equalize_lut(image):
  """ImageOps.equalize: map each channel through its cumulative histogram, in PIL's
  integer arithmetic; a channel with one value, or a tiny step, is left unchanged."""
  histograms = _histograms(image)
  last_value = 255 - jnp.argmax(histograms[:, ::-1] > 0, axis=1)
  last_count = jnp.take_along_axis(histograms, last_value[:, None], axis=1)
  step = (histograms.sum(axis=1, keepdims=True) - last_count) // 255
  below = jnp.cumsum(histograms, axis=1) - histograms
  equalized = jnp.clip((step // 2 + below) // jnp.maximum(step, 1), 0, 255).astype(jnp.uint8)
  keep = (step == 0) | (jnp.sum(histograms > 0, axis=1, keepdims=True) <= 1)
  return jnp.where(keep, identity_lut(), equalized)


IDENTITY_MATRIX = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def rotate_matrix(degrees, height: int, width: int):
  """The output -> input affine matrix of ``Image.rotate(degrees)`` about the centre."""
  angle = -jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  cx, cy = width / 2, height / 2
  return (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)


def _cubic(v1, v2, v3, v4, d):
  """PIL's transform cubic (a = -1) in its Horner form, between v2 (d=0) and v3 (d=1)."""
  return v2 + d * ((v3 - v1) + d * ((2 * (v1 - v2) + v3 - v4) + d * (v2 - v1 - v3 + v4)))


def affine(image, matrix, fill):
  """``image.transform(size, AFFINE, matrix, BICUBIC, fillcolor=fill)``.

  Output pixel centre (x + .5, y + .5) reads input point ``matrix @ (x + .5, y + .5, 1)``
  with PIL's 4x4 cubic (edge rows and columns repeated), truncated to uint8; a point
  outside the image takes ``fill``. PIL works in float64, this in float32, so a value
  within float32 error of an integer, or a point within it of the border, can differ.
  """
  h, w, _ = image.shape
  a, b, c, d, e, f = (jnp.asarray(m, jnp.float32) for m in matrix)
  ys, xs = jnp.meshgrid(
      jnp.arange(h, dtype=jnp.float32) + 0.5,
      jnp.arange(w, dtype=jnp.float32) + 0.5, indexing='ij')
  x_in, y_in = a * xs + b * ys + c, d * xs + e * ys + f
  inside = (x_in >= 0) & (x_in < w) & (y_in >= 0) & (y_in < h)
  x0, y0 = jnp.floor(x_in - 0.5), jnp.floor(y_in - 0.5)
  dx, dy = x_in - 0.5 - x0, y_in - 0.5 - y0
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
  if gather_free():
    value = gather_free_ops.bicubic(image, x0, y0, dx, dy, _cubic)
  else:
    taps = jnp.arange(-1, 3)
    cols = jnp.clip(x0[..., None] + taps, 0, w - 1)  # (h, w, 4)
    rows = jnp.clip(y0[..., None] + taps, 0, h - 1)
    # Each tap gathers whole RGB pixels of the flattened image (1.5x faster on CPU than
    # indexing [row, col]).
    pixels = image.reshape(h * w, 3).astype(jnp.float32)
    along_x = [
        _cubic(*(pixels[rows[..., i] * w + cols[..., j]]
                 for j in range(4)), dx[..., None])
        for i in range(4)
    ]
    value = _cubic(*along_x, dy[..., None])
  value = jnp.clip(jnp.floor(value), 0, 255).astype(jnp.uint8)
  return jnp.where(inside[..., None], value, jnp.asarray(fill, jnp.uint8))
