"""Augmentation from a small config: a host transform for the loader, a device function
for the train step.

Where each op runs, and why:
- Host (``host_crop``, PIL, loader workers): RandomResizedCrop and flip, because they
  change the image size; after them every image is (size, size, 3) uint8, so batches
  stack and cross to the device small.
- Device (jax.numpy, vmapped over per-sample keys, inside the jitted step): RandAugment,
  colour jitter, normalisation, random erasing, then Mixup/CutMix over pairs. These are
  the costly per-pixel ops, and on an accelerator they are nearly free next to the model.
  On a CPU, XLA runs them ~15x slower than PIL, so CPU-only runs set ``augment_on='host'``
  and every per-image op runs in the workers (``host_mode``), from the same draws;
  the device then only normalises and mixes.

Keys: everything about view ``r`` of example ``i`` in epoch ``e`` comes from
``keys.sample_key(seed, e, i, r)`` (``r`` is 0 without repeated augmentation), whose data
the loader gives the host transform and puts in the batch as ``batch['key']``. The host
draws crop and flip from it (see ``host_crop``); every other per-image draw comes from
``draws.sample_draws``, wherever the op runs. Pair ``j`` (positions 2j and 2j+1) mixes with
the pair key of position 2j. Each image is thus a pure function of (seed, e, i, r), and
each mixed pair of its two examples, whatever the batch or device count.

Config keys (``make_train_augment``; a dict, a ConfigDict or keyword overrides):
image_size, scale, ratio, hflip, interpolation; rand_augment (timm spec or None),
color_jitter (0, a strength, or (brightness, contrast, saturation)); mean, std;
erase_prob; mixup_alpha, cutmix_alpha, mix_prob, switch_prob (both alphas 0: no mixing);
augment_on ('device', or 'host': every per-image op in the loader workers with PIL, for
CPU-only runs, see ``host_mode``); jpeg_draft (decode JPEGs at a reduced scale when
the crop allows, see ``host_crop.TrainCrop``). Both change pixels, so an FPD store must
be replayed with the config it was saved with.
The defaults are the DeiT/TinyViT recipe as timm runs it. timm turns colour jitter off
whenever RandAugment is on, so those recipes never jitter: the default here is 0.

The package, by where its code runs:
- ``host_crop``: the crop and flip (and eval's resize and centre crop), always on the host;
- ``draws``: a sample's draws for RandAugment, colour jitter and erasing, and the op
  arguments they give; both backends apply them, under the same op names:
- ``jax_ops`` (on ``uint8_ops``, PIL's uint8 arithmetic in jax.numpy) and ``mix``: the
  device half;
- ``pil_ops``, with ``host_mode`` (its loader transform and transport format):
  ``augment_on='host'``, every per-image op in the workers.
"""
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from tinyvit_jax import normalisation
from tinyvit_jax.data import keys
from tinyvit_jax.data.augment import draws
from tinyvit_jax.data.augment import host_crop
from tinyvit_jax.data.augment import host_mode
from tinyvit_jax.data.augment import jax_ops
from tinyvit_jax.data.augment import mix
from tinyvit_jax.data.augment import uint8_ops

TRAIN_DEFAULTS = dict(image_size=224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5,
                      interpolation='bicubic', rand_augment='rand-m9-mstd0.5-inc1',
                      color_jitter=0.0, mean=normalisation.IMAGENET_MEAN,
                      std=normalisation.IMAGENET_STD, erase_prob=0.25, mixup_alpha=0.8,
                      cutmix_alpha=1.0, mix_prob=1.0, switch_prob=0.5, augment_on='device',
                      jpeg_draft=False)

TPU_PASSES = 8  # see _each_image

EVAL_DEFAULTS = dict(image_size=224, crop_pct=0.875, interpolation='bicubic',
                     mean=normalisation.IMAGENET_MEAN, std=normalisation.IMAGENET_STD)


class Augment(NamedTuple):
  """``host``: the loader transform, ``(record, key_data) -> dict of numpy arrays``.

  ``device``: for training ``(images uint8 (B, H, W, 3), key_data uint32 (B, 2), targets
  (B, classes) or None) -> (images float32, targets mixed as their images, or None)``
  (with ``augment_on='host'`` the images come augmented, as ``host_mode.pack``'s float16);
  for evaluation ``images -> images``. Pure and jittable; targets are dense rows
  (``mix.smooth_one_hot`` for labels).

  ``mixes``: whether ``device`` mixes pairs (Mixup/CutMix), which needs an even
  per-device batch.
  """
  host: Callable
  device: Callable
  mixes: bool = False


def train_images(images, key_data, targets, *, rand_augment, color_jitter, mean, std, erase_prob,
                 mixing):
  """The training device half; ``make_train_augment`` binds the keyword settings."""
  settings = None if rand_augment is None else {
      name: value for name, value in rand_augment.items() if name != 'fill'
  }

  def one_image(image, key):
    drawn = draws.sample_draws(key, image.shape[0], rand_augment=settings,
                               color_jitter=color_jitter, erase_prob=erase_prob)
    if 'ops' in drawn:
      image = jax_ops.rand_augment(image, drawn['ops'], drawn['arguments'], rand_augment['ops'],
                                   rand_augment['fill'])
    if 'jitter' in drawn:
      image = jax_ops.colour_jitter(image, drawn['jitter'])
    image = jax_ops.normalise(image, mean, std)
    if 'erase' in drawn:
      image = jax_ops.random_erase(image, drawn['erase'])
    return image

  images = _each_image(one_image, images, jax.random.wrap_key_data(key_data))
  return mixed_images(images, key_data, targets, mixing=mixing)


def _each_image(fn, images, image_keys):
  """``fn`` vmapped over the batch. On a TPU in ``TPU_PASSES`` passes, unrolled, each of
  every ``TPU_PASSES``-th image, so that each device keeps its own images (pass ``j``
  holds image ``TPU_PASSES * r + j`` of each row ``r``) and the gather-free ops'
  temporaries (~50 MB a 224 image) are a pass's, not the batch's: TinyViT-5M's train
  step at 512 a chip then fits a v5e's 16 GB. Unrolled, not a loop: XLA's cost analysis
  counts a loop's body once."""
  if not uint8_ops.gather_free() or len(images) % TPU_PASSES:
    return jax.vmap(fn)(images, image_keys)
  passes = lambda x: x.reshape(-1, TPU_PASSES, *x.shape[1:]).swapaxes(0, 1)
  images, image_keys = passes(images), passes(image_keys)
  out = jnp.stack([jax.vmap(fn)(images[j], image_keys[j]) for j in range(TPU_PASSES)])
  return out.swapaxes(0, 1).reshape(-1, *out.shape[2:])


def host_augmented_images(images, key_data, targets, *, mean, std, mixing):
  """The device half when the host ran the per-image ops (``augment_on='host'``): unpack
  and normalise its float16 images (``host_mode.unpack_normalised``), then mix."""
  images = host_mode.unpack_normalised(images, mean, std)
  return mixed_images(images, key_data, targets, mixing=mixing)


def mixed_images(images, key_data, targets, *, mixing):
  """Mixup/CutMix of pair j with the pair key of position 2j."""
  if mixing is None:
    return images, targets
  pair_keys = jax.vmap(keys.augment_streams)(jax.random.wrap_key_data(key_data))[3]
  return mix.mix_pairs(images, targets, pair_keys[0::2], **mixing)


def make_train_augment(config=None, **overrides) -> Augment:
  """Host transform and device function of a training config (see the module doc)."""
  cfg = _settings(TRAIN_DEFAULTS, config, overrides)
  _check_crop(cfg)
  _check_probability('hflip', cfg['hflip'])
  _check_probability('erase_prob', cfg['erase_prob'])
  _check_probability('mix_prob', cfg['mix_prob'])
  _check_probability('switch_prob', cfg['switch_prob'])
  if min(cfg['mixup_alpha'], cfg['cutmix_alpha']) < 0:
    raise ValueError(f'mixup_alpha={cfg["mixup_alpha"]} and cutmix_alpha='
                     f'{cfg["cutmix_alpha"]} must be >= 0 (0 turns one off).')
  jitter = cfg['color_jitter']
  jitter = tuple(float(s) for s in (jitter if isinstance(jitter, (tuple, list)) else [jitter] * 3))
  if len(jitter) != 3 or min(jitter) < 0:
    raise ValueError(f'color_jitter={cfg["color_jitter"]}: give one strength >= 0 or '
                     '(brightness, contrast, saturation); hue is not supported.')
  if cfg['augment_on'] not in ('device', 'host'):
    raise ValueError(f'augment_on={cfg["augment_on"]!r}; expected "device" or "host".')
  rand_augment = fill = None
  if cfg['rand_augment']:
    fill = tuple(min(255, round(255 * m)) for m in cfg['mean'])  # timm's img_mean
    rand_augment = draws.parse_spec(cfg['rand_augment'])
  mixing = None
  if cfg['mixup_alpha'] > 0 or cfg['cutmix_alpha'] > 0:
    mixing = dict(mixup_alpha=cfg['mixup_alpha'], cutmix_alpha=cfg['cutmix_alpha'],
                  switch_prob=cfg['switch_prob'], prob=cfg['mix_prob'])
  crop = host_crop.TrainCrop(cfg['image_size'], tuple(cfg['scale']), tuple(cfg['ratio']),
                             cfg['hflip'], cfg['interpolation'], cfg['jpeg_draft'])
  if cfg['augment_on'] == 'host':
    host = host_mode.TrainOnHost(crop, rand_augment, jitter, cfg['erase_prob'], fill)
    device = functools.partial(host_augmented_images, mean=tuple(cfg['mean']),
                               std=tuple(cfg['std']), mixing=mixing)
    return Augment(host, device, mixing is not None)
  device = functools.partial(train_images, rand_augment=rand_augment
                             and dict(rand_augment, fill=fill), color_jitter=jitter,
                             mean=tuple(cfg['mean']), std=tuple(cfg['std']),
                             erase_prob=cfg['erase_prob'], mixing=mixing)
  return Augment(crop, device, mixing is not None)


def make_eval_augment(config=None, **overrides) -> Augment:
  """timm's eval transform: resize to size / crop_pct, centre crop, normalise."""
  cfg = _settings(EVAL_DEFAULTS, config, overrides)
  _check_size_and_interpolation(cfg)
  if not 0 < cfg['crop_pct'] <= 1:
    raise ValueError(f'crop_pct={cfg["crop_pct"]} must be in (0, 1].')
  host = host_crop.EvalResizeCrop(cfg['image_size'], cfg['crop_pct'], cfg['interpolation'])
  device = functools.partial(jax_ops.normalise, mean=tuple(cfg['mean']), std=tuple(cfg['std']))
  return Augment(host, device)


def _settings(defaults: dict, config, overrides: dict) -> dict:
  """Defaults updated by ``config`` then ``overrides``; unknown keys are an error."""
  given = dict(config or {}, **overrides)
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(f'Unknown augmentation settings {unknown}; known: {sorted(defaults)}.')
  return dict(defaults, **given)


def _check_probability(name: str, value: float):
  if not 0 <= value <= 1:
    raise ValueError(f'{name}={value} is a probability; it must be in [0, 1].')


def _check_size_and_interpolation(cfg: dict):
  if cfg['image_size'] < 1:
    raise ValueError(f'image_size={cfg["image_size"]} must be positive.')
  if cfg['interpolation'] not in host_crop.INTERPOLATIONS:
    raise ValueError(f'interpolation={cfg["interpolation"]!r}; expected one of '
                     f'{sorted(host_crop.INTERPOLATIONS)}.')


def _check_crop(cfg: dict):
  _check_size_and_interpolation(cfg)
  (scale_lo, scale_hi), (ratio_lo, ratio_hi) = cfg['scale'], cfg['ratio']
  if not 0 < scale_lo <= scale_hi <= 1:
    raise ValueError(f'scale={cfg["scale"]} must satisfy 0 < min <= max <= 1.')
  if not 0 < ratio_lo <= ratio_hi:
    raise ValueError(f'ratio={cfg["ratio"]} must satisfy 0 < min <= max.')
