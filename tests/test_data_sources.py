"""Random-access sources: digits, synthetic and image folders return the same record."""
import hashlib
import os

import numpy as np
import pytest
from PIL import Image
from sklearn import datasets

from tinyvit_jax.data.sources import decode
from tinyvit_jax.data.sources import digits
from tinyvit_jax.data.sources import image_folder
from tinyvit_jax.data.sources import synthetic

# sha256 of the digits test indices (int64 little-endian). It pins the split across
# machines and library versions: a change here silently reshuffles train and test.
DIGITS_TEST_SHA256 = '3530be80b9605f4c4adc46d0ee3006a356c16968a8efcc58f24463bc820d5ef9'


def _check_record(record, index, size, num_classes):
  assert record['image'].shape == (*size, 3) and record['image'].dtype == np.uint8
  assert record['index'] == index and 0 <= record['label'] < num_classes


def test_digits_shape_count_and_range():
  train, test = digits.DigitsSource('train'), digits.DigitsSource('test', image_size=40)
  assert (len(train), len(test)) == (1438, 359)
  _check_record(train[5], 5, (32, 32), 10)
  _check_record(test[7], 7, (40, 40), 10)
  assert train.images.max() == 255 and train.images.min() == 0
  # Grey digits made RGB: the three channels agree.
  assert np.array_equal(train[0]['image'][..., 0], train[0]['image'][..., 2])


def test_digits_split_is_fixed_stratified_and_disjoint():
  labels = datasets.load_digits().target
  test = digits.split_indices(labels, 'test')
  train = digits.split_indices(labels, 'train')
  assert hashlib.sha256(test.astype('<i8').tobytes()).hexdigest() == DIGITS_TEST_SHA256
  assert np.array_equal(digits.DigitsSource('test').indices, test)
  assert not set(train) & set(test) and len(train) + len(test) == len(labels)
  test_share = np.bincount(labels[test]) / np.bincount(labels)
  np.testing.assert_allclose(test_share, 0.2, atol=0.01)


def test_digits_upsampling_is_flat_on_flat_and_monotone_on_ramps():
  constant = np.full((1, 8, 8), 7.0)
  np.testing.assert_allclose(digits.upsample_bilinear(constant, 32), 7.0)
  ramp = np.arange(8.0)[None, None, :].repeat(8, axis=1)
  up = digits.upsample_bilinear(ramp, 32)
  assert np.all(np.diff(up[0, 0]) >= 0)  # monotone, no ringing
  assert up[0, 0, 0] == 0 and up[0, 0, -1] == 7


def test_digits_unknown_split():
  with pytest.raises(ValueError, match="'val'.*'train' or 'test'"):
    digits.DigitsSource('val')


def test_synthetic_is_deterministic_and_class_dependent():
  source = synthetic.SyntheticSource(50, num_classes=5, image_size=24, seed=3)
  _check_record(source[12], 12, (24, 24), 5)
  assert np.array_equal(source[12]['image'], synthetic.SyntheticSource(50, 5, 24, 3)[12]['image'])
  assert not np.array_equal(source[12]['image'], source[17]['image'])  # same class, new example
  # Class colours separate the classes: the nearest class-mean colour classifies well.
  colours = np.array([source[i]['image'].mean((0, 1)) for i in range(50)])
  labels = np.array([source[i]['label'] for i in range(50)])
  centroids = np.array([colours[labels == c].mean(0) for c in range(5)])
  predicted = np.argmin(((colours[:, None] - centroids[None])**2).sum(-1), axis=1)
  assert (predicted == labels).mean() > 0.9
  with pytest.raises(IndexError, match=r'index 50 is outside \[0, 50\)'):
    source[50]


def _write_folder(root, classes=('b_dog', 'a_cat'), per_class=3):
  rng = np.random.default_rng(0)
  for name in classes:
    os.makedirs(root / name)
    for i in range(per_class):
      Image.fromarray(rng.integers(0, 255, (6, 9, 3), np.uint8)).save(root / name / f'{i}.png')
  Image.fromarray(rng.integers(0, 255, (6, 9), np.uint8)).save(root / classes[0] / 'gray.PNG')
  (root / classes[0] / 'notes.txt').write_text('not an image')


def test_image_folder_order_labels_and_decode(tmp_path):
  _write_folder(tmp_path)
  source = image_folder.ImageFolderSource(str(tmp_path))
  assert source.class_names == ['a_cat', 'b_dog']
  assert [path for path, _ in source.files] == [
      'a_cat/0.png', 'a_cat/1.png', 'a_cat/2.png', 'b_dog/0.png', 'b_dog/1.png', 'b_dog/2.png',
      'b_dog/gray.PNG'
  ]
  assert [label for _, label in source.files] == [0, 0, 0, 1, 1, 1, 1]
  _check_record(source[6], 6, (6, 9), 2)  # the grayscale file comes out RGB
  expected = np.asarray(Image.open(tmp_path / 'a_cat' / '1.png'))
  assert np.array_equal(source[1]['image'], expected)


def test_image_folder_missing_or_empty_root(tmp_path):
  with pytest.raises(FileNotFoundError, match=f'{tmp_path / "nope"}.*ROOT/<class>'):
    image_folder.ImageFolderSource(str(tmp_path / 'nope'))
  (tmp_path / 'only_class').mkdir()
  with pytest.raises(ValueError, match=f'{tmp_path}.*holds no images.*1 class folders'):
    image_folder.ImageFolderSource(str(tmp_path))


def test_image_folder_names_an_undecodable_file(tmp_path):
  _write_folder(tmp_path)
  (tmp_path / 'a_cat' / '1.png').write_bytes(b'not a png')
  source = image_folder.ImageFolderSource(str(tmp_path))
  with pytest.raises(decode.UndecodableImage, match='not an image format PIL reads') as error:
    source[1]
  # The loader names it so (tests/test_data_undecodable.py has the whole line).
  assert str(decode.located(error.value, source, 1)).startswith(
      f"Image '{tmp_path / 'a_cat' / '1.png'}' (example 1) does not decode: not an image")
