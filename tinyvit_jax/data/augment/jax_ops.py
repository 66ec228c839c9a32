"""The per-image ops on the device, in jax.numpy, from ``draws``: ``pil_ops`` mirrored.

Each takes one HWC image and its sample's draws; ``augment`` vmaps them over a batch
inside the jitted step. RandAugment and colour jitter work on uint8 with PIL's rounding
(``uint8_ops``), so they match timm and torchvision pixel for pixel; erasing works on the
normalised float image, as timm's RandomErasing.

Why a RandAugment layer runs every kind of op: under ``vmap`` a per-sample
``lax.switch`` computes all fifteen ops and selects one. But each op is a lookup table,
a blend or a warp, so a layer applies one of each: the chosen op's arguments for its
kind, identity arguments (exact no-ops on uint8) for the other two. A batch then pays
one warp, one lookup and one blend per layer.
"""
import jax
import jax.numpy as jnp

from tinyvit_jax import normalisation
from tinyvit_jax.data.augment import draws as draws_lib
from tinyvit_jax.data.augment import uint8_ops

# Lookup-table ops: name -> (image, integer argument) -> (3, 256) table.
LUT_OPS = {
    'AutoContrast': lambda image, arg: uint8_ops.autocontrast_lut(image),
    'Equalize': lambda image, arg: uint8_ops.equalize_lut(image),
    'Invert': lambda image, arg: uint8_ops.invert_lut(),
    'Posterize': lambda image, bits: uint8_ops.posterize_lut(bits),
    'PosterizeIncreasing': lambda image, bits: uint8_ops.posterize_lut(bits),
    'Solarize': lambda image, arg: uint8_ops.solarize_lut(arg),
    'SolarizeIncreasing': lambda image, arg: uint8_ops.solarize_lut(arg),
    'SolarizeAdd': lambda image, arg: uint8_ops.solarize_add_lut(arg),
}

# Blend ops: name -> the degenerate image the factor blends towards.
BLEND_OPS = {
    'Color': uint8_ops.colour_degenerate,
    'ColorIncreasing': uint8_ops.colour_degenerate,
    'Contrast': uint8_ops.contrast_degenerate,
    'ContrastIncreasing': uint8_ops.contrast_degenerate,
    'Brightness': uint8_ops.brightness_degenerate,
    'BrightnessIncreasing': uint8_ops.brightness_degenerate,
    'Sharpness': uint8_ops.smooth,
    'SharpnessIncreasing': uint8_ops.smooth,
}

# torchvision's ColorJitter ops on PIL, by index: brightness, contrast, saturation.
_JITTER_DEGENERATES = (uint8_ops.brightness_degenerate, uint8_ops.contrast_degenerate,
                       uint8_ops.colour_degenerate)


def apply_arguments(image, op, arguments: draws_lib.OpArguments, ops, fill):
  """Op ``ops[op]`` (-1: none) with its ``draws.op_arguments`` on a uint8 HWC image;
  ``fill`` (uint8 RGB, static) is what warps leave outside the image."""
  chosen = [(op == index, name) for index, name in enumerate(ops)]
  lut = uint8_ops.identity_lut()
  for is_chosen, name in chosen:
    if name in LUT_OPS:
      lut = jnp.where(is_chosen, LUT_OPS[name](image, arguments.lut), lut)
  image = uint8_ops.apply_lut(image, lut)

  degenerate = image
  for is_chosen, name in chosen:
    if name in BLEND_OPS:
      degenerate = jnp.where(is_chosen, BLEND_OPS[name](image), degenerate)
  image = uint8_ops.blend(degenerate, image, arguments.factor)
  return uint8_ops.affine(image, arguments.matrix, fill)


def rand_augment(image, drawn_ops, arguments: draws_lib.OpArguments, ops, fill):
  """RandAugment's layers (``sample_draws``' 'ops' and 'arguments') on a uint8 image."""
  for layer in range(len(drawn_ops)):
    image = apply_arguments(image, drawn_ops[layer],
                            jax.tree.map(lambda leaf: leaf[layer], arguments), ops, fill)
  return image


def colour_jitter(image, jitter):
  """torchvision ColorJitter on a uint8 image, from ``draws.draw_jitter``'s (order,
  factors)."""
  order, factors = jitter
  for which in order:
    degenerate = jax.lax.switch(which, _JITTER_DEGENERATES, image)
    image = uint8_ops.blend(degenerate, image, factors[which])
  return image


def normalise(image, mean=normalisation.IMAGENET_MEAN, std=normalisation.IMAGENET_STD):
  """uint8 -> float32 ``(x / 255 - mean) / std``, as ToTensor + Normalize."""
  scaled = image.astype(jnp.float32) / 255.0
  return (scaled - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def random_erase(image, box: draws_lib.EraseBox):
  """timm's RandomErasing, mode 'pixel', on a normalised HWC image: ``box`` becomes
  per-pixel N(0, 1) noise drawn from its noise key (the normalised image's scale)."""
  h, w, _ = image.shape
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  inside = ((rows >= box.top) & (rows < box.top + box.height) & (cols >= box.left) &
            (cols < box.left + box.width))
  noise = jax.random.normal(box.noise_key, image.shape, image.dtype)
  return jnp.where((inside & box.erase)[..., None], noise, image)
