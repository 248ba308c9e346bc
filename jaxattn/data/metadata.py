"""A dataset's classes and image shape, known without reading it or TFDS.

``Experiment(config, data="metadata")`` (summary, bench, the converter, the
CPU layout probe) needs only a dataset's classes and channels. With the
``data`` extra installed they come from the dataset's source (a TFDS
builder's code, the digits, an image folder); without it, from here: the
datasets the bundled configs name, and an image folder whose classes the
config fixes (assumed RGB). Their class names are then their indices, and
their split sizes are unknown (an epoch is nominal).
"""

from __future__ import annotations

import dataclasses

from jaxattn.data import DatasetError

# (image shape, classes) as the TFDS builders declare them; None: sizes vary.
# tests/data/test_metadata.py checks them against TFDS.
TFDS_DATASETS = {
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
    "mnist": ((28, 28, 1), 10),
    "food101": ((None, None, 3), 101),
    "cars196": ((None, None, 3), 196),
}
# sources.DigitsSource's.
OFFLINE_DATASETS = {"digits": ((8, 8, 1), 10)}


@dataclasses.dataclass(frozen=True)
class Metadata:
  """What ``resolve_config`` asks of a source when no split is read."""

  name: str
  image_shape: tuple[int | None, int | None, int]
  class_names: tuple[str, ...]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def num_examples(self, split: str) -> int:
    raise DatasetError(f"{self.name}: the size of split {split!r} is not "
                       "known without reading the dataset.")


def _indexed(name: str, shape, num_classes: int) -> Metadata:
  return Metadata(name, tuple(shape),
                  tuple(str(i) for i in range(num_classes)))


def known(dataset: str) -> Metadata | None:
  """The metadata of ``tfds:NAME``, ``mock:NAME`` or ``offline:NAME`` for
  the datasets listed above; None for any other dataset string."""
  kind, _, name = dataset.partition(":")
  table = OFFLINE_DATASETS if kind == "offline" else (
      TFDS_DATASETS if kind in ("tfds", "mock") else {})
  if name not in table:
    return None
  (height, width, channels), num_classes = table[name]
  if kind == "mock":  # sources.MockSource makes varying sizes 64 x 64.
    height, width = height or 64, width or 64
  return _indexed(dataset, (height, width, channels), num_classes)


def assumed_rgb(dataset: str, num_classes: int) -> Metadata:
  """An image folder that cannot be read here, with the config's classes."""
  return _indexed(dataset, (None, None, 3), num_classes)
