"""Procedural labelled images of any size and class count, for benchmarks and tests.

Each class has its own colour pair and stripe orientation and frequency, so a model can
learn it; each example adds its own phase shift and pixel noise, so no two are alike.
Example ``i`` is a pure function of ``(seed, i)``: no storage, any length.
"""
import numpy as np


class SyntheticSource:
  """Random-access source: ``source[i]`` is dict(image=uint8 HWC RGB, label, index)."""

  def __init__(self, num_examples: int, num_classes: int = 10, image_size: int = 32, seed: int = 0):
    if num_classes < 1:
      raise ValueError(f'num_classes={num_classes}; it must be at least 1.')
    self.num_examples = num_examples
    self.num_classes = num_classes
    self.image_size = image_size
    self.seed = seed

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < self.num_examples:
      raise IndexError(f'index {index} is outside [0, {self.num_examples}).')
    label = index % self.num_classes
    return dict(image=self._image(label, index), label=label, index=int(index))

  def _image(self, label: int, index: int) -> np.ndarray:
    style = np.random.default_rng((self.seed, 0, label))
    colours = style.integers(0, 256, size=(2, 3))
    angle = np.pi * label / self.num_classes
    frequency = 1 + label % 4
    sample = np.random.default_rng((self.seed, 1, index))
    grid = np.linspace(0, 2 * np.pi, self.image_size, endpoint=False)
    y, x = np.meshgrid(grid, grid, indexing='ij')
    phase = sample.uniform(0, 2 * np.pi)
    wave = np.cos(frequency * (x * np.cos(angle) + y * np.sin(angle)) + phase)
    blend = (wave[..., None] + 1) / 2
    image = blend * colours[0] + (1 - blend) * colours[1]
    image += sample.normal(0, 20, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)
