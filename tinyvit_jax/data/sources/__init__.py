"""Where examples come from, by name, so a config names its data:
``from_config(config.data, 'train')``, i.e.
``make_source(config.data.source, **config.data.train)``. The readers live here, with the
decoding every one of them shares, the folder converter (``prepare``) and class-index files.

Every source is random access, ``source[i]`` -> dict(image=uint8 HWC RGB, label, index),
with ``len`` and ``num_classes``. The args are the constructor's:
- ``digits``: split ('train' | 'test'), image_size (the embedded scikit-learn digits);
- ``synthetic``: num_examples, num_classes, image_size, seed;
- ``folder``: root (an image folder ``root/<class>/<file>``, read in place);
- ``array_record``: directory (a folder prepared by ``python -m
  tinyvit_jax.data.sources.prepare``);
- ``tfds``: name, split, data_dir (a tfds dataset prepared in array_record format).
"""
from tinyvit_jax.data.sources import array_record_source
from tinyvit_jax.data.sources import digits
from tinyvit_jax.data.sources import image_folder
from tinyvit_jax.data.sources import synthetic
from tinyvit_jax.data.sources import tfds_source

SOURCES = {
    'digits': digits.DigitsSource,
    'synthetic': synthetic.SyntheticSource,
    'folder': image_folder.ImageFolderSource,
    'array_record': array_record_source.ArrayRecordSource,
    'tfds': tfds_source.TfdsSource,
}


def make_source(name: str, /, **args):  # positional: tfds's own args include a name
  if name not in SOURCES:
    raise ValueError(f'Unknown data source {name!r}; known: {sorted(SOURCES)}.')
  return SOURCES[name](**args)


def from_config(data, split: str):
  """The source of a run's ``config.data``: its ``train`` or ``eval`` args."""
  return make_source(data.source, **data[split])
