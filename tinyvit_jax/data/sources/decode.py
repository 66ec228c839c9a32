"""Encoded image bytes to the one in-memory image layout every source returns, and the
one refusal for bytes that are no image."""
import contextlib
import io

import numpy as np
from PIL import Image

from tinyvit_jax import errors

# What PIL raises for bytes it cannot turn into pixels: unknown format (an OSError),
# truncated data (OSError on load), malformed headers (SyntaxError, ValueError) and
# images past PIL's pixel limit.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class UndecodableImage(errors.UserError, ValueError):
  """An image that does not decode. A source or transform raises it with PIL's reason;
  ``located`` turns it into the one-line refusal naming the file, the example and the
  fix. The save pass and the student read through the same loader, so they refuse the
  same example: skipping it on one side only would shift every later stored row."""


@contextlib.contextmanager
def decoding():
  """Turns PIL's errors for bytes that are no image into ``UndecodableImage``."""
  try:
    yield
  except Image.UnidentifiedImageError:  # its message names a BytesIO object
    raise UndecodableImage('not an image format PIL reads') from None
  except DECODE_ERRORS as error:
    raise UndecodableImage(str(error) or type(error).__name__) from None


def located(error: UndecodableImage, source, index: int,
            epoch: int | None = None) -> UndecodableImage:
  """The refusal for example ``index`` of ``source``: where it lives (``source.locate``),
  the example index and epoch, PIL's reason and how to repair it."""
  where, repair = (source.locate(int(index)) if hasattr(source, 'locate') else
                   (f'Example {index} of {type(source).__name__}', 'Fix the source.'))
  when = '' if epoch is None else f', epoch {epoch}'
  return UndecodableImage(f'{where} (example {index}{when}) does not decode: {error}. '
                          f'{repair}')


def decode_image(data: bytes) -> np.ndarray:
  """RGB uint8 HWC pixels of an encoded image (JPEG, PNG, ...), whatever its mode.

  Grayscale, palette, CMYK and alpha images become plain RGB, so a batch stacks.
  """
  with decoding(), Image.open(io.BytesIO(data)) as image:
    return np.asarray(image.convert('RGB'))
