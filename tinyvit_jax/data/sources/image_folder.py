"""Images laid out as ``root/<class>/<file>``, read in place.

Classes are the sorted sub-folder names (label = rank); files are sorted within each
class. The order is therefore the same on every machine and run, which the sample keys
and any stored teacher logits rely on. For large folders, convert once with
``python -m tinyvit_jax.data.sources.prepare`` and read the shards with ``ArrayRecordSource``.
"""
import os

from tinyvit_jax.data.sources import decode
from tinyvit_jax.data.sources import missing

# Files taken as images (case-insensitive), as torchvision's ImageFolder does; anything
# else in a class folder (notes, .DS_Store) is not an example.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm')


def list_image_folder(root: str) -> tuple[list[str], list[tuple[str, int]]]:
  """(class names, [(path relative to root, label)]) in the deterministic order."""
  if not os.path.isdir(root):
    raise missing.NoData(f'Image folder {root!r} does not exist or is not a directory; '
                         'expected the layout ROOT/<class>/<image file>.')
  classes = sorted(
      entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith('.'))
  files = []
  for label, name in enumerate(classes):
    for file in sorted(os.listdir(os.path.join(root, name))):
      if file.lower().endswith(IMAGE_EXTENSIONS):
        files.append((os.path.join(name, file), label))
  if not files:
    raise missing.UnusableData(
        f'Image folder {root!r} holds no images: expected ROOT/<class>/<file> with extensions '
        f'{", ".join(IMAGE_EXTENSIONS)}; found {len(classes)} class folders.')
  return classes, files


class ImageFolderSource:
  """Random-access source: ``source[i]`` is dict(image=uint8 HWC RGB, label, index).

  With ``decode=False``, ``image`` is the file's bytes, for transforms that decode
  themselves (``host_crop.TrainCrop``: fewer copies, optional reduced-scale JPEG decode).
  """

  def __init__(self, root: str, decode: bool = True):
    self.root = root
    self.decode = decode
    self.class_names, self.files = list_image_folder(root)
    self.num_classes = len(self.class_names)

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> dict:
    path, label = self.files[index]
    with open(os.path.join(self.root, path), 'rb') as f:
      data = f.read()
    image = decode.decode_image(data) if self.decode else data
    return dict(image=image, label=label, index=int(index))

  def locate(self, index: int) -> tuple[str, str]:
    """(Where example ``index`` lives, how to repair it when it does not decode.)"""
    return (f'Image {os.path.join(self.root, self.files[index][0])!r}',
            'Replace it with a decodable image under the same name and rerun: every '
            'example index, and every stored teacher row, stays where it was (deleting it '
            'would shift them). `python -m '
            f'tinyvit_jax.data.sources.prepare --folder {self.root} --check` lists every '
            'undecodable image at once.')
