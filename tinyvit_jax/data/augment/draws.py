"""Every random draw of a sample's per-image ops, and the op arguments they give.

Both backends apply these same draws: ``jax_ops`` on the device, inside the jitted step,
and ``pil_ops`` in the loader workers for CPU-only runs (``augment_on='host'``). So an
image is the same function of its key whichever backend runs it, up to the two
backends' rounding (``sample_draws`` is the one place a sample's draws are made).

RandAugment, timm's ``rand-m9-mstd0.5-inc1``: each of ``num_layers`` (2) layers picks an
op uniformly (with replacement), applies it with probability ``prob`` (0.5) at magnitude
N(9, 0.5) clipped to [0, 10], and flips the sign of signed ops with probability 0.5.
Every op is one of three kinds, each with one argument: a lookup table (an integer:
bits, threshold, amount), a blend towards a degenerate image (a factor) or an affine warp
(a PIL matrix); ``op_arguments`` gives a layer all three, identity values for the kinds
its op is not. Affine ops resample bicubic (the DeiT/TinyViT recipes set it) and fill
with the dataset mean in uint8 (timm's ``img_mean``).

Keys: a sample key splits into (RandAugment, colour jitter, erasing, pair) streams
(``keys.augment_streams``). The RandAugment stream splits into one key per layer, each
into (op, apply, magnitude, sign); colour jitter's into (order, brightness, contrast,
saturation); erasing's into (apply, area, aspect, top, left, noise).
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from tinyvit_jax.data import keys
from tinyvit_jax.data.augment import uint8_ops

MAX_LEVEL = 10.0  # timm's _LEVEL_DENOM: magnitudes are clipped to [0, 10].

# timm's _RAND_INCREASING_TRANSFORMS (inc1) and _RAND_TRANSFORMS (inc0), in timm's order.
INCREASING_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
                  'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing',
                  'BrightnessIncreasing', 'SharpnessIncreasing', 'ShearX', 'ShearY',
                  'TranslateXRel', 'TranslateYRel')
OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd',
       'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateXRel',
       'TranslateYRel')

# Op arguments are written in the magnitude m (0 to 10), not timm's level m / 10, with
# exact integer products first and one division, so float32 rounds each argument once,
# as float64 then float32 round timm's (PIL's blend factor is a C float): 1 - 0.81 and
# 0.1 land on the float32 PIL uses.


def _divide(numerator, denominator):
  """``numerator / denominator`` rounded once. XLA rewrites division by a constant or a
  broadcast scalar as multiplication by the rounded reciprocal, which can be one float32
  step off (0.1 becomes 0.099999994); a full-shape denominator behind a barrier is not
  rewritten."""
  numerator = jnp.asarray(numerator, jnp.float32)
  return numerator / jax.lax.optimization_barrier(jnp.full_like(numerator, denominator))


def _posterize_bits(m):
  return jnp.trunc(_divide(m * 4, 10)).astype(jnp.int32)


def _solarize_threshold(m):
  return jnp.minimum(256, jnp.trunc(_divide(m * 256, 10)).astype(jnp.int32))


# Lookup-table ops: name -> (magnitude -> the integer argument PIL's op takes: bits,
# threshold, amount; 0 when none).
LUT_ARGUMENTS = {
    'AutoContrast': lambda m: 0,
    'Equalize': lambda m: 0,
    'Invert': lambda m: 0,
    'Posterize': _posterize_bits,
    'PosterizeIncreasing': lambda m: 4 - _posterize_bits(m),
    'Solarize': _solarize_threshold,
    'SolarizeIncreasing': lambda m: 256 - _solarize_threshold(m),
    'SolarizeAdd': lambda m: jnp.minimum(128,
                                         jnp.trunc(m * 11).astype(jnp.int32)),
}


def _enhance_factor(m, signed_m):
  """timm's _enhance_level_to_arg: 0.1 to 1.9, growing with the magnitude (unsigned)."""
  del signed_m
  return _divide(m * 18 + 10, 100)


def _enhance_increasing_factor(m, signed_m):
  """timm's _enhance_increasing_level_to_arg: 1 +- 0.09 m, at least 0.1."""
  del m
  return jnp.maximum(jnp.float32(0.1), _divide(100 + signed_m * 9, 100))


# Blend ops: name -> ((m, signed m) -> factor).
BLEND_FACTORS = {
    'Color': _enhance_factor,
    'ColorIncreasing': _enhance_increasing_factor,
    'Contrast': _enhance_factor,
    'ContrastIncreasing': _enhance_increasing_factor,
    'Brightness': _enhance_factor,
    'BrightnessIncreasing': _enhance_increasing_factor,
    'Sharpness': _enhance_factor,
    'SharpnessIncreasing': _enhance_increasing_factor,
}

# Warp ops: (signed m, height, width) -> PIL affine matrix, as timm builds them: rotate
# by 3m degrees, shear by 0.03m, translate by 0.045m of the side (translate_pct 0.45).
WARP_MATRICES = {
    'Rotate':
        lambda signed_m, h, w: uint8_ops.rotate_matrix(signed_m * 3, h, w),
    'ShearX':
        lambda signed_m, h, w: (1.0, _divide(signed_m * 3, 100), 0.0, 0.0, 1.0, 0.0),
    'ShearY':
        lambda signed_m, h, w: (1.0, 0.0, 0.0, _divide(signed_m * 3, 100), 1.0, 0.0),
    'TranslateXRel':
        lambda signed_m, h, w: (1.0, 0.0, _divide(signed_m * 45 * w, 1000), 0.0, 1.0, 0.0),
    'TranslateYRel':
        lambda signed_m, h, w: (1.0, 0.0, 0.0, 0.0, 1.0, _divide(signed_m * 45 * h, 1000)),
}

KNOWN_OPS = frozenset(LUT_ARGUMENTS) | frozenset(BLEND_FACTORS) | frozenset(WARP_MATRICES)


class OpArguments(NamedTuple):
  """What a layer's op takes, one field per kind; the kinds it is not take identity values.

  ``lut``: the lookup-table op's integer argument; ``factor``: the blend factor (1: none);
  ``matrix``: the affine matrix (identity: none).
  """
  lut: jax.Array
  factor: jax.Array
  matrix: jax.Array


def op_arguments(op, magnitude, negate, ops, height: int, width: int) -> OpArguments:
  """Arguments of op ``ops[op]`` at ``magnitude`` (0 to 10) on a height x width image.

  ``op`` = -1: none. ``negate`` flips the sign of signed ops (timm's _randomly_negate).
  ``op``, ``magnitude`` and ``negate`` may be traced; ``ops`` (names) is static.
  """
  magnitude = jnp.asarray(magnitude, jnp.float32)
  signed = jnp.where(negate, -magnitude, magnitude)
  lut, factor = jnp.int32(0), jnp.float32(1.0)
  matrix = jnp.asarray(uint8_ops.IDENTITY_MATRIX, jnp.float32)
  for index, name in enumerate(ops):
    is_chosen = op == index
    if name in LUT_ARGUMENTS:
      lut = jnp.where(is_chosen, LUT_ARGUMENTS[name](magnitude), lut)
    elif name in BLEND_FACTORS:
      factor = jnp.where(is_chosen, BLEND_FACTORS[name](magnitude, signed), factor)
    else:
      matrix = jnp.where(is_chosen, jnp.stack(WARP_MATRICES[name](signed, height, width)), matrix)
  return OpArguments(lut, factor, matrix)


def draw_layer(key, num_ops: int, prob: float, magnitude: float, magnitude_std: float):
  """(op or -1 when skipped, magnitude, negate) of one layer, as timm draws them."""
  op_key, apply_key, magnitude_key, sign_key = jax.random.split(key, 4)
  op = jax.random.randint(op_key, (), 0, num_ops)
  applied = jax.random.uniform(apply_key) < prob
  if magnitude_std == math.inf:
    drawn = jax.random.uniform(magnitude_key, (), jnp.float32, 0.0, magnitude)
  else:
    drawn = magnitude + magnitude_std * jax.random.normal(magnitude_key, (), jnp.float32)
  drawn = jnp.clip(drawn, 0.0, MAX_LEVEL)
  negate = jax.random.uniform(sign_key) > 0.5
  return jnp.where(applied, op, -1), drawn, negate


def layer_arguments(key, height: int, width: int, *, ops=INCREASING_OPS, num_layers: int = 2,
                    prob: float = 0.5, magnitude: float = 9.0, magnitude_std: float = 0.5):
  """[(op or -1, OpArguments)] of each layer on a height x width image, from ``key``."""
  layers = []
  for layer_key in jax.random.split(key, num_layers):
    op, drawn, negate = draw_layer(layer_key, len(ops), prob, magnitude, magnitude_std)
    layers.append((op, op_arguments(op, drawn, negate, ops, height, width)))
  return layers


def draw_jitter(key, brightness: float, contrast: float, saturation: float):
  """(order of the three ops (3,), factors (3,)) of torchvision's ColorJitter.

  Each factor is uniform in [max(0, 1 - s), 1 + s]; torchvision permutes the three enhance
  ops, so the order is random too. A strength of 0 gives factor 1, an exact no-op. Key
  split: (order, brightness, contrast, saturation).
  """
  order_key, *factor_keys = jax.random.split(key, 4)
  factors = jnp.stack([
      jax.random.uniform(k, (), jnp.float32, max(0.0, 1.0 - s), 1.0 + s)
      for k, s in zip(factor_keys, (brightness, contrast, saturation))
  ])
  return jax.random.permutation(order_key, 3), factors


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
  area = (jax.random.uniform(area_key,
                             (ERASE_ATTEMPTS,), jnp.float32, min_area, max_area) * height * width)
  log_aspect = jax.random.uniform(aspect_key, (ERASE_ATTEMPTS,), jnp.float32, math.log(min_aspect),
                                  -math.log(min_aspect))
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


def sample_draws(key, size: int, *, rand_augment: dict | None, color_jitter: tuple,
                 erase_prob: float) -> dict:
  """Every per-image draw of one sample on a size x size crop, from its sample key.

  ``rand_augment``: ``layer_arguments``' settings (``parse_spec``'s) or None;
  ``color_jitter``: (brightness, contrast, saturation) strengths. Returns what is on:
  ``'ops'`` (layers,) and ``'arguments'`` (``OpArguments`` stacked over layers),
  ``'jitter'`` (``draw_jitter``), ``'erase'`` (an ``EraseBox``).
  """
  rand_augment_key, jitter_key, erase_key, _ = keys.augment_streams(key)
  draws = {}
  if rand_augment is not None:
    layers = layer_arguments(rand_augment_key, size, size, **rand_augment)
    draws['ops'] = jnp.stack([op for op, _ in layers])
    draws['arguments'] = jax.tree.map(lambda *leaves: jnp.stack(leaves),
                                      *[arguments for _, arguments in layers])
  if any(color_jitter):
    draws['jitter'] = draw_jitter(jitter_key, *color_jitter)
  if erase_prob:
    draws['erase'] = draw_erase(erase_key, size, size, erase_prob)
  return draws


def parse_spec(spec: str) -> dict:
  """timm's RandAugment string, e.g. 'rand-m9-mstd0.5-inc1', as ``layer_arguments``'
  settings.

  Sections: m (magnitude), n (layers), p (op probability), mstd (magnitude std; 'inf'
  or > 100 draws uniformly from [0, m]), inc (1: the increasing op set). Missing
  sections take timm's defaults: m10, n2, p0.5, mstd0, inc0.
  """
  sections = spec.split('-')
  if sections[0] != 'rand':
    raise ValueError(f'RandAugment spec {spec!r} must start with "rand-".')
  kwargs = dict(ops=OPS, num_layers=2, prob=0.5, magnitude=MAX_LEVEL, magnitude_std=0.0)
  for section in sections[1:]:
    name = next((n for n in ('mstd', 'inc', 'm', 'n', 'p') if section.startswith(n)), None)
    value = section[len(name):] if name else ''
    try:
      if name == 'mstd':
        std = float(value)
        kwargs['magnitude_std'] = math.inf if std > 100 else std
      elif name == 'inc':
        kwargs['ops'] = INCREASING_OPS if int(value) else OPS
      elif name == 'm':
        kwargs['magnitude'] = float(value)
      elif name == 'n':
        kwargs['num_layers'] = int(value)
      elif name == 'p':
        kwargs['prob'] = float(value)
      else:
        raise ValueError
    except ValueError:
      raise ValueError(f'RandAugment spec {spec!r}: cannot read section {section!r}; '
                       'known sections are m<float>, n<int>, p<float>, mstd<float>, '
                       'inc<0|1>.') from None
  check_kwargs(**kwargs)
  return kwargs


def check_kwargs(*, ops=INCREASING_OPS, num_layers: int = 2, prob: float = 0.5,
                 magnitude: float = 9.0, magnitude_std: float = 0.5, fill=(124, 116, 104)):
  """Raises a ValueError naming the bad RandAugment setting."""
  unknown = sorted(set(ops) - KNOWN_OPS)
  if unknown or not ops:
    raise ValueError(f'RandAugment ops {unknown or "(none)"} are not known; choose from '
                     f'{sorted(KNOWN_OPS)}.')
  if num_layers < 0:
    raise ValueError(f'RandAugment num_layers={num_layers}; it must be >= 0.')
  if not 0 <= prob <= 1:
    raise ValueError(f'RandAugment op probability {prob} is outside [0, 1].')
  if not 0 <= magnitude <= MAX_LEVEL:
    raise ValueError(f'RandAugment magnitude {magnitude} is outside [0, {MAX_LEVEL:g}].')
  if not magnitude_std >= 0:
    raise ValueError(f'RandAugment magnitude std {magnitude_std} must be >= 0.')
  if len(fill) != 3 or not all(0 <= v <= 255 for v in fill):
    raise ValueError(f'RandAugment fill {fill} must be three uint8 values.')
