"""Encoded image bytes to the one in-memory image layout every source returns."""
import io

import numpy as np
from PIL import Image

# What PIL raises for bytes it cannot turn into pixels: unknown format (an OSError),
# truncated data (OSError on load), malformed headers (SyntaxError, ValueError) and
# images past PIL's pixel limit.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def decode_image(data: bytes) -> np.ndarray:
  """RGB uint8 HWC pixels of an encoded image (JPEG, PNG, ...), whatever its mode.

  Grayscale, palette, CMYK and alpha images become plain RGB, so a batch stacks.
  """
  with Image.open(io.BytesIO(data)) as image:
    return np.asarray(image.convert('RGB'))
