"""Mixup/CutMix in pair mode: positions 2j and 2j+1 of the epoch order mix with each other.

Both members of a pair get the same lambda and the same box, drawn from one pair key,
and each takes the other's pixels (timm's ``Mixup(mode='pair')``, with the pair being
adjacent positions, as Cream's TinyViT, rather than i and B-1-i). So what a pair
becomes depends on the two examples and the pair key only, never on the rest of the
batch: the batch size, device count and resume point cannot change it. ``augment``
derives the pair key from the sample key of the pair's first position.

Targets are dense (B, num_classes) rows, so the same mix serves smoothed one-hot labels
(``smooth_one_hot``) and teacher probabilities alike.
"""
import jax
import jax.numpy as jnp


def smooth_one_hot(labels, num_classes: int, smoothing: float = 0.0):
  """timm's smoothed one-hot: ``1 - smoothing + smoothing / C`` on the label, else
  ``smoothing / C``."""
  off = smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * (1.0 - smoothing) + off


def draw_pair(key, height: int, width: int, *, mixup_alpha: float, cutmix_alpha: float,
              switch_prob: float, prob: float):
  """(lambda, box (top, bottom, left, right), use_cutmix) of one pair, as timm draws them.

  With probability ``prob`` the pair mixes: CutMix (lambda ~ Beta(cutmix_alpha,
  cutmix_alpha)) with probability ``switch_prob`` when both alphas are on, else Mixup
  (Beta(mixup_alpha, mixup_alpha)). CutMix's box is timm's rand_bbox: sides
  ``int(side * sqrt(1 - lambda))`` about a uniform centre, clipped to the image, and
  lambda is corrected to one minus the clipped box's area fraction. Otherwise lambda is 1
  and the box empty. At least one alpha must be positive. Key split: (switch, mixup
  lambda, cutmix lambda, apply, y, x).
  """
  switch_key, mixup_key, cutmix_key, apply_key, y_key, x_key = jax.random.split(key, 6)
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(switch_key) < switch_prob
    lam = jnp.where(use_cutmix, jax.random.beta(cutmix_key, cutmix_alpha, cutmix_alpha),
                    jax.random.beta(mixup_key, mixup_alpha, mixup_alpha))
  elif cutmix_alpha > 0:
    use_cutmix, lam = jnp.asarray(True), jax.random.beta(cutmix_key, cutmix_alpha, cutmix_alpha)
  else:
    use_cutmix, lam = jnp.asarray(False), jax.random.beta(mixup_key, mixup_alpha, mixup_alpha)
  lam = jnp.where(jax.random.uniform(apply_key) < prob, lam, 1.0)

  cut = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * cut).astype(jnp.int32)
  cut_w = jnp.floor(width * cut).astype(jnp.int32)
  cy = jax.random.randint(y_key, (), 0, height)
  cx = jax.random.randint(x_key, (), 0, width)
  box = (jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + (cut_h + 1) // 2, 0, height),
         jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + (cut_w + 1) // 2, 0, width))
  box_area = (box[1] - box[0]) * (box[3] - box[2])
  box = tuple(jnp.where(use_cutmix, edge, 0) for edge in box)
  lam = jnp.where(use_cutmix, 1.0 - box_area / (height * width), lam)
  return lam, box, use_cutmix


def mix_pair(first, second, first_target, second_target, lam, box, use_cutmix):
  """The pair's two mixed images and targets: each member keeps lambda of itself.

  CutMix swaps the box between the two; Mixup blends ``lam * own + (1 - lam) * other``.
  """
  top, bottom, left, right = box
  rows = jnp.arange(first.shape[0])[:, None]
  cols = jnp.arange(first.shape[1])[None, :]
  in_box = ((rows >= top) & (rows < bottom) & (cols >= left) & (cols < right))[..., None]
  cut_first = jnp.where(in_box, second, first)
  cut_second = jnp.where(in_box, first, second)
  blend_first = first * lam + second * (1.0 - lam)
  blend_second = second * lam + first * (1.0 - lam)
  return (jnp.where(use_cutmix, cut_first,
                    blend_first), jnp.where(use_cutmix, cut_second,
                                            blend_second), first_target * lam + second_target *
          (1.0 - lam), second_target * lam + first_target * (1.0 - lam))


def check_even(batch: int):
  if batch % 2:
    raise ValueError(f'Mixup/CutMix mixes positions 2j and 2j+1 with each other, so the '
                     f'batch must be even, but it holds {batch} images. Use an even '
                     'per-device batch (order.check_mixup_batch), or turn Mixup and '
                     'CutMix off.')


def mix_pairs(images, targets, pair_keys, **draw_kwargs):
  """Mixes images (B, H, W, C) and targets (B, num_classes) pair by pair, pair ``j``
  being rows 2j and 2j+1 with key ``pair_keys[j]``. Returns (images, targets); targets
  None: the images alone, and None.

  ``draw_kwargs``: ``draw_pair``'s mixup_alpha, cutmix_alpha, switch_prob, prob.
  """
  batch, height, width = images.shape[:3]
  check_even(batch)
  lam, box, use_cutmix = jax.vmap(lambda key: draw_pair(key, height, width, **draw_kwargs))(
      pair_keys)
  rows = jnp.zeros((batch, 0), images.dtype) if targets is None else targets
  first, second, first_t, second_t = jax.vmap(mix_pair)(images[0::2], images[1::2], rows[0::2],
                                                        rows[1::2], lam, box, use_cutmix)
  interleave = lambda a, b: jnp.stack([a, b], axis=1).reshape((batch,) + a.shape[1:])
  return interleave(first, second), None if targets is None else interleave(first_t, second_t)
