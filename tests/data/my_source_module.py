"""A dataset kind of one's own, registered from outside the package.

What a user's module looks like: a `DataSource` and one `register_source`
call at import time. Importing this module (``config.source_modules =
("tests.data.my_source_module",)``) makes ``mine:NAME`` a dataset string:
three classes of generated 12 x 10 RGB images, a bright vertical band whose
position is the class, on seeded noise. ``NAME`` seeds the noise.
"""

import zlib

import numpy as np
import tensorflow as tf

from jaxattn.data import sources

CLASS_NAMES = ["left", "middle", "right"]
IMAGE_SHAPE = (12, 10, 3)


class StripesSource(sources.DataSource):
  """Whole splits only (no slicing): ``train`` (48) and ``test`` (16)."""

  SPLIT_SIZES = {"train": 48, "test": 16}

  def __init__(self, name: str):
    self.name = f"mine:{name}"
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    self._splits = {}
    for split, n in self.SPLIT_SIZES.items():
      labels = np.arange(n) % len(CLASS_NAMES)
      images = rng.integers(0, 64, (n, *IMAGE_SHAPE), dtype=np.uint8)
      for image, label in zip(images, labels):
        band = slice(3 * label, 3 * label + 4)
        image[:, band] = 255
      self._splits[split] = (images, labels.astype(np.int64))

  split_names = property(lambda self: list(self.SPLIT_SIZES))
  class_names = property(lambda self: list(CLASS_NAMES))
  image_shape = property(lambda self: IMAGE_SHAPE)

  def num_examples(self, split):
    if split not in self._splits:
      raise sources.DatasetError(
          f"{self.name} has no split {split!r}; splits: {self.split_names}.")
    return len(self._splits[split][1])

  def read(self, split, *, process_index=0, process_count=1, decode=True):
    self.num_examples(split)  # A clear error for an unknown split.
    images, labels = self._splits[split]
    # This process's contiguous share, in a fixed order.
    rows = np.array_split(np.arange(len(labels)), process_count)[process_index]
    return tf.data.Dataset.from_tensor_slices(
        {"image": images[rows], "label": labels[rows]})


def make_source(name: str, **unused_options) -> StripesSource:
  """The factory: the TFDS options (data_dir, ...) mean nothing here."""
  return StripesSource(name)


sources.register_source("mine", make_source)
