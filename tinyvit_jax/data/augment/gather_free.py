"""``uint8_ops``' gathers and scatters as compares and one-hot matmuls: what a TPU runs.

XLA:TPU gathers an (H, W, 3) image pixel by pixel, its 3 channels padded to the 128
lanes of a vector register, and a histogram's scatter-add one pixel at a time: its cost
model charges a 224 x 224 bicubic warp (16 taps) 54 GB and a histogram 53 GB, where the
image is 150 KB. Written as compares and matmuls, the same ops cost it megabytes.

The tables and histograms are exactly ``uint8_ops``' own, and so are the warp's taps: a
one-hot bfloat16 matmul of uint8 values sums one non-zero product (integers to 256 are
exact in bfloat16). The warp then interpolates them by the same float32 expression, in
another fusion, so a value within float32 error of an integer can truncate the other way
(tests/test_augment_vs_timm.py holds both formulations to PIL). ``uint8_ops.gather_free``
is the switch.
"""
import jax
import jax.numpy as jnp

# A warp's output is read tile x tile pixels at a time, each block from one 2*tile square
# of the image: enough for any affine map whose rows of (a, b) and (d, e) have absolute
# sums up to (2 * TILE - 4) / (TILE - 1) = 1.71 (rotation by any angle: 1.41; timm's
# largest shear: 1.3), with the bicubic's 4 taps.
TILE = 8


def histograms(image):
  """(3, 256) int32 counts of each value per channel."""
  flat = image.reshape(-1, 3).T.astype(jnp.int32)
  return jnp.sum(flat[:, :, None] == jnp.arange(256), axis=1, dtype=jnp.int32)


def apply_lut(image, lut):
  """``image.point(lut)`` with ``lut`` of shape (3, 256), one table per channel."""
  hits = image[..., None] == jnp.arange(256, dtype=jnp.uint8)
  return jnp.max(jnp.where(hits, lut, jnp.uint8(0)), axis=-1)


def bicubic(image, rows, cols, dx, dy, cubic):
  """``cubic`` (the 4-tap interpolation) of ``image[rows[..., i], cols[..., j]]`` along x
  by ``dx``, then y by ``dy``, as float32 ``(h, w, 3)``: the bicubic warp's value before
  rounding. ``rows``, ``cols``: ``(h, w, 4)`` int32 taps of every output pixel, already
  clamped to the image; ``dx``, ``dy``: ``(h, w, 1)``."""
  h, w, _ = image.shape
  span = 2 * TILE
  pad_h, pad_w = -h % TILE, -w % TILE
  blocks_y, blocks_x = (h + pad_h) // TILE, (w + pad_w) // TILE

  def blocked(x):  # (h, w, ...) -> (blocks, pixels, ...), each block TILE x TILE pixels
    x = jnp.pad(x, ((0, pad_h), (0, pad_w)) + ((0, 0),) * (x.ndim - 2), mode='edge')
    x = x.reshape(blocks_y, TILE, blocks_x, TILE, *x.shape[2:]).swapaxes(1, 2)
    return x.reshape(blocks_y * blocks_x, TILE * TILE, *x.shape[4:])

  rows, cols = blocked(rows), blocked(cols)  # (blocks, pixels, 4)
  source = jnp.pad(image, ((0, max(span - h, 0)), (0, max(span - w, 0)), (0, 0)))
  top = jnp.clip(rows.min(axis=(1, 2)), 0, source.shape[0] - span)
  left = jnp.clip(cols.min(axis=(1, 2)), 0, source.shape[1] - span)
  planar = jnp.moveaxis(source, -1, 0)  # (3, h, w): channels off the TPU's 128 lanes
  square = lambda t, l: jax.lax.dynamic_slice(planar, (0, t, l), (3, span, span))
  squares = jax.vmap(square)(top, left).transpose(0, 2, 1, 3)  # (blocks, row, 3, col)
  blocks, pixels = rows.shape[:2]

  def one_hot(taps, start):
    return ((taps - start[:, None, None])[..., None] == jnp.arange(span)).astype(jnp.bfloat16)

  # Rows by one matmul a block, (pixel, tap) x square row; then columns by a product and
  # a sum (as a batched matmul of 4 x 16 by 16 x 12, XLA:TPU's cost is 25 times this).
  hot_rows = one_hot(rows, top).reshape(blocks, pixels * 4, span)
  picked_rows = jnp.einsum('bqr,brk->bqk', hot_rows, squares.reshape(blocks, span, 3 * span),
                           preferred_element_type=jnp.bfloat16)
  picked_rows = picked_rows.reshape(blocks, pixels, 4, 1, 3, span)
  hot_cols = one_hot(cols, left)[:, :, None, :, None, :]  # (blocks, pixels, 1, j, 1, col)
  values = jnp.sum(hot_cols * picked_rows, axis=-1, dtype=jnp.float32)  # (..., i, j, channel)
  dx, dy = blocked(dx), blocked(dy)
  value = cubic(*(cubic(*(values[:, :, i, j] for j in range(4)), dx) for i in range(4)), dy)
  value = value.reshape(blocks_y, blocks_x, TILE, TILE, 3).swapaxes(1, 2)
  return value.reshape(h + pad_h, w + pad_w, 3)[:h, :w]
