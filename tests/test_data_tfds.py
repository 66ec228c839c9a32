"""tfds array_record datasets read without TensorFlow, and the errors when they are absent."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from tinyvit_jax.data import sources
from tinyvit_jax.data.sources import tfds_source
from tinyvit_jax.train import config as config_lib


class TinyTensorImages(tfds.core.GeneratorBasedBuilder):
  """Six 4x5 grey images: Tensor features let tfds prepare array_record without TF."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(4, 5, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=3)
        }))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    for i in range(6):
      yield i, {'image': np.full((4, 5, 1), 10 * i, np.uint8), 'label': i % 3}


def test_reads_a_prepared_array_record_dataset(tmp_path):
  TinyTensorImages(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
  source = tfds_source.TfdsSource('tiny_tensor_images', 'train', str(tmp_path))
  assert len(source) == 6 and source.num_classes == 3
  records = [source[i] for i in range(6)]
  assert [r['index'] for r in records] == list(range(6))
  for r in records:
    assert r['image'].shape == (4, 5, 3) and r['image'].dtype == np.uint8
    assert r['label'] == r['image'][0, 0, 0] // 10 % 3  # label travels with its image
  assert sorted(r['image'][0, 0, 0] for r in records) == [0, 10, 20, 30, 40, 50]


def test_missing_data_dir_names_dataset_dir_and_command(tmp_path):
  missing = tmp_path / 'no_such_dir'
  with pytest.raises(FileNotFoundError) as error:
    tfds_source.TfdsSource('imagenet2012', 'train', str(missing))
  message = str(error.value)
  assert "'imagenet2012'" in message and 'does not exist' in message
  assert f'tfds build imagenet2012 --data_dir {missing} --file_format array_record' in message


def test_a_recipe_reaches_the_tfds_source(tmp_path):
  """A tfds recipe's ``data.train`` holds the dataset's ``name``, which reaches TfdsSource
  through make_source, whose own first argument is also called name."""
  TinyTensorImages(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
  config = config_lib.base_config()
  config.data.train.update(name='tiny_tensor_images', data_dir=str(tmp_path))
  assert len(sources.from_config(config.data, 'train')) == 6


def test_unprepared_dataset_names_dataset_dir_and_command(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    tfds_source.TfdsSource('mnist', 'test', str(tmp_path))
  message = str(error.value)
  assert "'mnist' (split 'test') is not prepared in array_record format" in message
  assert f"in data_dir '{tmp_path}'" in message
  assert 'NotImplementedError: Random access data source for file format' in message
  assert f'tfds build mnist --data_dir {tmp_path}' in message


def test_unknown_dataset_names_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="'no_such_dataset'.*DatasetNotFoundError"):
    tfds_source.TfdsSource('no_such_dataset', 'train', str(tmp_path))
