"""What a logit store records about its rows, and what a student must share with it: the
one owner of the manifest's fields (``store`` writes and checks them; the save pass and
the student compute them here, from the same source, augmentation and seed)."""
import hashlib
import json

import numpy as np

from tinyvit_jax import writes
from tinyvit_jax.data import augment
from tinyvit_jax.data import order
from tinyvit_jax.data.sources import decode

META_FIELDS = ('dataset_name', 'dataset_size', 'dataset_fingerprint', 'seed', 'augmentation',
               'repeats', 'views_per_example', 'k', 'num_classes', 'teacher_name',
               'teacher_checkpoint_hash')
# What a student must share with the store for its rows to be the teacher's view of its
# own images (the teacher itself may differ: any teacher's rows train any student).
STUDENT_FIELDS = ('dataset_name', 'dataset_size', 'dataset_fingerprint', 'seed', 'augmentation',
                  'repeats', 'views_per_example', 'k', 'num_classes')


def dataset_fingerprint(source, samples: int = 16) -> str:
  """sha256 of the size, classes and ``samples`` records spread evenly over the dataset.

  Reading a few records keeps this instant on 14M images; it tells apart datasets,
  splits, image sizes and orders, though not one edited image among the unread ones.
  """
  n = len(source)
  digest = hashlib.sha256(
      json.dumps([n, getattr(source, 'num_classes', None),
                  getattr(source, 'class_names', None)]).encode())
  for index in sorted({int(i) for i in np.linspace(0, n - 1, min(samples, n)).round()}):
    try:
      record = source[index]
    except decode.UndecodableImage as error:
      raise decode.located(error, source, index) from None
    for name in sorted(record):
      value = record[name]
      digest.update(name.encode())
      digest.update(value if isinstance(value, bytes) else np.asarray(value).tobytes())
  return digest.hexdigest()


def augmentation_fields(aug_config) -> dict:
  """The full training augmentation config (defaults filled in) as plain JSON values."""
  augment.make_train_augment(aug_config)  # unknown keys and bad values raise here
  given = aug_config.to_dict() if hasattr(aug_config, 'to_dict') else dict(aug_config or {})
  return writes.plain_json(dict(augment.TRAIN_DEFAULTS, **given))


def store_fields(source, *, dataset_name: str, aug_config, seed: int, k: int,
                 num_classes: int | None = None, teacher=None,
                 repeats: order.Repeats = order.Repeats(), views: int = 0) -> dict:
  """What a store records about its rows: the single owner of the manifest's metadata.

  With ``teacher`` (save pass): every ``META_FIELDS``, C being the teacher's class
  count. Without (student): the ``STUDENT_FIELDS`` to check against a store, C being
  ``num_classes``, the student head's class count. ``views``: a bounded store's epochs
  (``order.stored_epoch``), 0 for one per epoch trained.
  """
  if num_classes is None:
    if teacher is None:
      raise ValueError('store_fields needs num_classes (the student head\'s) or a teacher.')
    num_classes = teacher.num_classes
  fields = dict(dataset_name=dataset_name, dataset_size=len(source),
                dataset_fingerprint=dataset_fingerprint(source), seed=int(seed),
                augmentation=augmentation_fields(aug_config),
                repeats=order.check_repeats(repeats)._asdict(),
                views_per_example=order.check_views(views), k=int(k), num_classes=int(num_classes))
  if teacher is None:
    return fields
  return dict(fields, teacher_name=teacher.name, teacher_checkpoint_hash=teacher.checkpoint_hash)
