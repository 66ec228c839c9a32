"""RandAugment with timm's op sets and magnitude rules, for one uint8 image and its key.

timm's ``rand-m9-mstd0.5-inc1``: each of ``num_layers`` (2) layers picks an op uniformly
(with replacement), applies it with probability ``prob`` (0.5) at magnitude
N(9, 0.5) clipped to [0, 10], and flips the sign of signed ops with probability 0.5.
Affine ops resample bicubic (the DeiT/TinyViT recipes set it) and fill with the
dataset mean in uint8 (timm's ``img_mean``).

Why one layer runs every kind: under ``vmap`` a per-sample ``lax.switch`` computes all
fifteen ops and selects one. But each op is a lookup table, a blend towards a degenerate
image or an affine warp (see ``uint8_ops``), so a layer applies one of each: the chosen
op's parameters for its kind, identity parameters (exact no-ops on uint8) for the other
two. A batch then pays one warp, one lookup and one blend per layer.

Random draws per layer come from ``jax.random.split(key, num_layers)``, and each layer
key splits into (op, apply, magnitude, sign) keys.
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

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


# Lookup-table ops: name -> (magnitude -> integer argument, (image, argument) -> (3, 256)
# table). The argument is what the PIL op takes (bits, threshold, amount; 0 when none).
_LUT_OPS = {
    'AutoContrast': (lambda m: 0, lambda image, arg: uint8_ops.autocontrast_lut(image)),
    'Equalize': (lambda m: 0, lambda image, arg: uint8_ops.equalize_lut(image)),
    'Invert': (lambda m: 0, lambda image, arg: uint8_ops.invert_lut()),
    'Posterize': (_posterize_bits, lambda image, bits: uint8_ops.posterize_lut(bits)),
    'PosterizeIncreasing': (lambda m: 4 - _posterize_bits(m),
                            lambda image, bits: uint8_ops.posterize_lut(bits)),
    'Solarize': (_solarize_threshold, lambda image, arg: uint8_ops.solarize_lut(arg)),
    'SolarizeIncreasing': (lambda m: 256 - _solarize_threshold(m),
                           lambda image, arg: uint8_ops.solarize_lut(arg)),
    'SolarizeAdd': (lambda m: jnp.minimum(128, jnp.trunc(m * 11).astype(jnp.int32)),
                    lambda image, arg: uint8_ops.solarize_add_lut(arg)),
}


def _enhance_factor(m, signed_m):
  """timm's _enhance_level_to_arg: 0.1 to 1.9, growing with the magnitude (unsigned)."""
  del signed_m
  return _divide(m * 18 + 10, 100)


def _enhance_increasing_factor(m, signed_m):
  """timm's _enhance_increasing_level_to_arg: 1 +- 0.09 m, at least 0.1."""
  del m
  return jnp.maximum(jnp.float32(0.1), _divide(100 + signed_m * 9, 100))


# Blend ops: name -> (degenerate image of the input, (m, signed m) -> factor).
_BLEND_OPS = {
    'Color': (uint8_ops.colour_degenerate, _enhance_factor),
    'ColorIncreasing': (uint8_ops.colour_degenerate, _enhance_increasing_factor),
    'Contrast': (uint8_ops.contrast_degenerate, _enhance_factor),
    'ContrastIncreasing': (uint8_ops.contrast_degenerate, _enhance_increasing_factor),
    'Brightness': (uint8_ops.brightness_degenerate, _enhance_factor),
    'BrightnessIncreasing': (uint8_ops.brightness_degenerate, _enhance_increasing_factor),
    'Sharpness': (uint8_ops.smooth, _enhance_factor),
    'SharpnessIncreasing': (uint8_ops.smooth, _enhance_increasing_factor),
}

# Warp ops: (signed m, height, width) -> PIL affine matrix, as timm builds them: rotate
# by 3m degrees, shear by 0.03m, translate by 0.045m of the side (translate_pct 0.45).
_WARP_OPS = {
    'Rotate': lambda signed_m, h, w: uint8_ops.rotate_matrix(signed_m * 3, h, w),
    'ShearX': lambda signed_m, h, w: (1.0, _divide(signed_m * 3, 100), 0.0, 0.0, 1.0, 0.0),
    'ShearY': lambda signed_m, h, w: (1.0, 0.0, 0.0, _divide(signed_m * 3, 100), 1.0, 0.0),
    'TranslateXRel': lambda signed_m, h, w: (1.0, 0.0, _divide(signed_m * 45 * w, 1000),
                                             0.0, 1.0, 0.0),
    'TranslateYRel': lambda signed_m, h, w: (1.0, 0.0, 0.0,
                                             0.0, 1.0, _divide(signed_m * 45 * h, 1000)),
}

KNOWN_OPS = frozenset(_LUT_OPS) | frozenset(_BLEND_OPS) | frozenset(_WARP_OPS)


class OpArguments(NamedTuple):
  """What a layer's op takes, one field per kind; the kinds it is not take identity values.

  ``lut``: the lookup-table op's integer argument; ``factor``: the blend factor (1: none);
  ``matrix``: the affine matrix (identity: none). ``randaugment_pil`` applies the same
  arguments with PIL, so host and device share this one mapping from magnitudes.
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
    if name in _LUT_OPS:
      lut = jnp.where(is_chosen, _LUT_OPS[name][0](magnitude), lut)
    elif name in _BLEND_OPS:
      factor = jnp.where(is_chosen, _BLEND_OPS[name][1](magnitude, signed), factor)
    else:
      matrix = jnp.where(is_chosen, jnp.stack(_WARP_OPS[name](signed, height, width)), matrix)
  return OpArguments(lut, factor, matrix)


def apply_op(image, op, magnitude, negate, ops, fill):
  """Op ``ops[op]`` at ``magnitude`` (0 to 10) on a uint8 HWC image; ``op`` = -1: none.

  See ``op_arguments``; ``fill`` (uint8 RGB, static) is what warps leave outside the image.
  """
  h, w, _ = image.shape
  return apply_arguments(image, op, op_arguments(op, magnitude, negate, ops, h, w), ops, fill)


def apply_arguments(image, op, arguments: OpArguments, ops, fill):
  """Op ``ops[op]`` (-1: none) with its ``op_arguments`` on a uint8 HWC image."""
  chosen = [(op == index, name) for index, name in enumerate(ops)]
  lut = uint8_ops.identity_lut()
  for is_chosen, name in chosen:
    if name in _LUT_OPS:
      lut = jnp.where(is_chosen, _LUT_OPS[name][1](image, arguments.lut), lut)
  image = uint8_ops.apply_lut(image, lut)

  degenerate = image
  for is_chosen, name in chosen:
    if name in _BLEND_OPS:
      degenerate = jnp.where(is_chosen, _BLEND_OPS[name][0](image), degenerate)
  image = uint8_ops.blend(degenerate, image, arguments.factor)
  return uint8_ops.affine(image, arguments.matrix, fill)


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


def rand_augment(image, key, *, ops=INCREASING_OPS, fill=(124, 116, 104), **settings):
  """RandAugment on one uint8 HWC image; every draw comes from ``key``.

  ``settings``: ``layer_arguments``' num_layers, prob, magnitude, magnitude_std.
  """
  h, w, _ = image.shape
  for op, arguments in layer_arguments(key, h, w, ops=ops, **settings):
    image = apply_arguments(image, op, arguments, ops, fill)
  return image


def parse_spec(spec: str) -> dict:
  """timm's RandAugment string, e.g. 'rand-m9-mstd0.5-inc1', as ``rand_augment`` kwargs.

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
