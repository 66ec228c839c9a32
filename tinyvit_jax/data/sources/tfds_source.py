"""A tfds dataset prepared in array_record format, read without TensorFlow.

``tfds.data_source`` gives random access to array_record datasets (e.g. imagenet2012,
or ImageNet-21k prepared once on a machine with TensorFlow) and decodes images with PIL.
It cannot read TFRecord files, and it never downloads here; when the data is not there
we say which dataset, which directory and the command that prepares it.
"""
import os

import numpy as np

from tinyvit_jax.data.sources import decode
from tinyvit_jax.data.sources import missing


def _not_prepared(name: str, split: str, data_dir: str, reason: str) -> missing.NoData:
  return missing.NoData(
      f'tfds dataset {name!r} (split {split!r}) is not prepared in array_record format in '
      f'data_dir {data_dir!r}: {reason} '
      f'Prepare it on a machine with TensorFlow: `tfds build {name} --data_dir {data_dir} '
      f'--file_format array_record` (add --manual_dir DIR for datasets you download by '
      f'hand, such as imagenet2012). For your own images, use an image folder: `python -m '
      f'tinyvit_jax.data.sources.prepare --folder ROOT --out DIR` and ArrayRecordSource.')


class TfdsSource:
  """Random-access source: dict(image=uint8 HWC RGB, label, index) from a tfds split."""

  def __init__(self, name: str, split: str, data_dir: str, image_key: str = 'image',
               label_key: str = 'label'):
    if not os.path.isdir(data_dir):
      raise _not_prepared(name, split, data_dir, 'the directory does not exist.')
    import tensorflow_datasets as tfds  # Slow to import; only this source needs it.
    try:
      self._records = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as error:  # tfds raises many types; all mean "not readable here".
      raise _not_prepared(name, split, data_dir,
                          f'{type(error).__name__}: {str(error).splitlines()[0]}') from error
    self.num_classes = self._records.dataset_info.features[label_key].num_classes
    self.image_key, self.label_key = image_key, label_key
    self.name, self.split, self.data_dir = name, split, data_dir

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    with decode.decoding():  # tfds decodes images with PIL as it reads them
      record = self._records[index]
    image = np.asarray(record[self.image_key], np.uint8)
    if image.shape[-1] == 1:
      image = np.repeat(image, 3, axis=-1)
    return dict(image=image, label=int(record[self.label_key]), index=int(index))

  def locate(self, index: int) -> tuple[str, str]:
    """(Where example ``index`` lives, how to repair it when it does not decode.)"""
    return (f'Record {index} of tfds {self.name!r} split {self.split!r} in {self.data_dir!r}',
            f'Build the dataset again (`tfds build {self.name} --data_dir {self.data_dir} '
            '--file_format array_record`); or read your images as a folder, where '
            '`python -m tinyvit_jax.data.sources.prepare --folder ROOT --check` lists every '
            'undecodable one.')
