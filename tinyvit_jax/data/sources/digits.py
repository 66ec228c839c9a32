"""The embedded default dataset: scikit-learn's bundled 8x8 digits, as small RGB images.

It ships inside scikit-learn, so demos, tests and CI train on real labelled images with
no download. The 1,797 images (10 classes, values 0..16) are upsampled bilinearly: the
strokes come out smooth, like anti-aliased photos, so crops, flips and rotations do not
show blocky nearest-neighbour edges, and the digits do not line up with the stem's
stride-4 grid.
"""
import numpy as np

NUM_CLASSES = 10
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
  """Sorted indices of ``split`` ('train' or 'test'): a fixed stratified 80/20 split.

  Each class is shuffled by numpy's legacy ``RandomState``, whose stream numpy keeps
  frozen, so the split is the same on every machine and version.
  """
  if split not in ('train', 'test'):
    raise ValueError(f"digits split {split!r} is unknown; use 'train' or 'test'.")
  rng = np.random.RandomState(SPLIT_SEED)
  test = []
  for label in range(NUM_CLASSES):
    members = np.flatnonzero(labels == label)
    test.append(rng.permutation(members)[:round(TEST_FRACTION * len(members))])
  is_test = np.zeros(len(labels), bool)
  is_test[np.concatenate(test)] = True
  return np.flatnonzero(is_test if split == 'test' else ~is_test)


def upsample_bilinear(images: np.ndarray, size: int) -> np.ndarray:
  """(N, h, w) -> (N, size, size) with half-pixel centres and clamped edges.

  Written as two small interpolation matrices so it is exact numpy, independent of any
  image library's resampler.
  """

  def weights(src: int) -> np.ndarray:
    centres = np.clip((np.arange(size) + 0.5) * src / size - 0.5, 0, src - 1)
    low = np.floor(centres).astype(int)
    high = np.minimum(low + 1, src - 1)
    frac = centres - low
    matrix = np.zeros((size, src))
    np.add.at(matrix, (np.arange(size), low), 1 - frac)
    np.add.at(matrix, (np.arange(size), high), frac)
    return matrix

  rows, cols = weights(images.shape[1]), weights(images.shape[2])
  return np.einsum('yh,nhw,xw->nyx', rows, images, cols)


class DigitsSource:
  """Random-access source: ``source[i]`` is dict(image=uint8 HWC RGB, label, index).

  ``index`` is the position within this split, the index the sample key is built from.
  """

  def __init__(self, split: str = 'train', image_size: int = 32):
    from sklearn import datasets  # imported here: it takes a second, and only digits needs it
    digits = datasets.load_digits()
    self.indices = split_indices(digits.target, split)
    gray = upsample_bilinear(digits.images[self.indices] * (255 / 16), image_size)
    self.images = np.repeat(np.round(gray).astype(np.uint8)[..., None], 3, axis=-1)
    self.labels = digits.target[self.indices].astype(np.int64)
    self.num_classes = NUM_CLASSES

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict:
    return dict(image=self.images[index], label=int(self.labels[index]), index=int(index))
