"""``uint8_ops``' gathers and scatters as compares and one-hot matmuls: what a TPU runs.

XLA:TPU gathers an (H, W, 3) image pixel by pixel, its 3 channels padded to the 128
lanes of a vector register, and a histogram's scatter-add one pixel at a time: its cost
model charges a 224 x 224 bicubic warp (16 taps) 54 GB and a histogram 53 GB, where the
image is 150 KB. Written as compares and matmuls, the histogram costs it 6 MB and the
warp 0.3 GB (``benchmarks/augment_cost.py``).

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


def bicubic(image, x0, y0, dx, dy, cubic):
  """``cubic`` (PIL's 4-tap interpolation) of the image's 4 x 4 pixels from ``(y0 - 1, x0
  - 1)``, edge pixels repeated, along x by ``dx``, then y by ``dy``, as float32 ``(h, w,
  3)``: the bicubic warp's value before rounding. The four are ``(h, w)``, one per output
  pixel; ``x0``, ``y0`` int32."""
  h, w, _ = image.shape
  span = 2 * TILE
  pad_h, pad_w = -h % TILE, -w % TILE
  blocks_y, blocks_x = (h + pad_h) // TILE, (w + pad_w) // TILE

  def blocked(x):  # (h, w) -> (blocks, pixels), each block TILE x TILE pixels
    x = jnp.pad(x, ((0, pad_h), (0, pad_w)), mode='edge')
    return x.reshape(blocks_y, TILE, blocks_x, TILE).swapaxes(1, 2).reshape(-1, TILE * TILE)

  # Every array below keeps (tap row i, pixel), 4 x 64, as its last axis q: a TPU pads the
  # last axis to 128 lanes, so 4 taps, 16 columns or 3 channels there would cost 8-40x.
  x0, y0, dx, dy = blocked(x0), blocked(y0), blocked(dx), blocked(dy)  # (blocks, pixels)
  blocks = x0.shape[0]
  offsets = jnp.arange(-1, 3)[:, None]
  rows = jnp.clip(y0[:, None] + offsets, 0, h - 1).reshape(blocks, 1, -1)  # (b, 1, q)
  cols = jnp.tile(jnp.clip(x0[:, None] + offsets, 0, w - 1), (1, 1, 4))  # (b, j, q)
  source = jnp.pad(image, ((0, max(span - h, 0)), (0, max(span - w, 0)), (0, 0)))
  top = jnp.clip(rows.min(axis=(1, 2)), 0, source.shape[0] - span)
  left = jnp.clip(cols.min(axis=(1, 2)), 0, source.shape[1] - span)
  flat = source.reshape(source.shape[0], -1)  # (h, w x 3): a square's rows are contiguous
  square = lambda t, l: jax.lax.dynamic_slice(flat, (t, 3 * l), (span, 3 * span))
  squares = jax.vmap(square)(top, left)  # (blocks, row, (col, channel))
  spans = jnp.arange(span)[None, :, None]
  # A tap's row by a matmul a block, square rows x (columns x 3); its 4 columns by a
  # select and a sum (as a batched matmul of 4 x 16 by 16 x 3, XLA:TPU's cost is 25x).
  hot_rows = (rows - top[:, None, None] == spans).astype(jnp.bfloat16)  # (b, row, q)
  picked_rows = jnp.einsum('brq,brk->bkq', hot_rows, squares.astype(jnp.bfloat16),
                           preferred_element_type=jnp.bfloat16)
  picked_rows = picked_rows.reshape(blocks, span, 3, 1, -1)  # (b, col, channel, 1, q)
  hot_cols = cols[:, None, None] - left[:, None, None, None, None] == spans[..., None, None]
  values = jnp.sum(jnp.where(hot_cols, picked_rows, 0), axis=1, dtype=jnp.float32)  # (b, 3, j, q)
  along_x = cubic(*(values[:, :, j] for j in range(4)), jnp.tile(dx, (1, 4))[:, None])
  along_x = along_x.reshape(blocks, 3, 4, -1)
  value = cubic(*(along_x[:, :, i] for i in range(4)), dy[:, None])  # (blocks, 3, pixels)
  value = value.reshape(blocks_y, blocks_x, 3, TILE, TILE).transpose(0, 3, 1, 4, 2)
  return value.reshape(h + pad_h, w + pad_w, 3)[:h, :w]
