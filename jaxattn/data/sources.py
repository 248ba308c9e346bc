"""Where examples come from: TFDS builders, image folders, embedded datasets.

A dataset is named by one string:

* ``tfds:NAME[/CONFIG][:VERSION]``: any TFDS dataset. It is downloaded and
  prepared on first use where a network exists (``config.data_dir`` and
  ``config.manual_dir`` are honoured); without a network it fails at once with
  a message naming the offline alternatives instead of retrying for minutes.
* ``folder:PATH``: the image-folder layout ``PATH/<split>/<class>/*.jpg|png``.
* ``offline:digits``: scikit-learn's 1,797 real 8x8 handwritten digits, which
  ship inside the scikit-learn wheel, so it works with no network at all.
* ``mock:NAME``: random images with the shape and classes of TFDS dataset
  NAME (from its metadata, no download): for smoke runs and tests only.
* ``KIND:NAME`` for a kind of your own: :func:`register_source` called by a
  module of yours that ``config.source_modules`` lists (no edit here).

Every source answers the same questions (splits, sizes, classes, image shape)
and reads a split, or this process's share of it, as a ``tf.data.Dataset`` of
``{"image": uint8[H, W, C], "label": int64}`` in a fixed order. Splits accept
the TFDS slicing syntax (``train[:90%]``, ``train[45000:]+test``) for every
kind of source.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import os
import re
import socket
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxattn.data import DatasetError
from jaxattn.data.image_files import describe_image_problem
from jaxattn.data.tf_import import tf, tfds

from jaxattn.errors import BadInputError

OFFLINE_DATASETS = ("digits",)
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")

# A prepared TFDS split is read from this many of its files at once, one
# record from each in turn (tf.data's interleave): reading one file at a time
# leaves a 224-px pipeline waiting on I/O. A constant, not the core count,
# so the order of the examples (fixed under options.deterministic) is the
# same on every machine and a resumed run reads what the first one did.
_TFDS_FILES_AT_ONCE = 16

_OFFLINE_HINT = (
    "No network is reachable, so TFDS cannot download it. Offline options: "
    "'offline:digits' (real handwritten digits shipped with scikit-learn), "
    "'folder:PATH' for images laid out as PATH/<split>/<class>/*.jpg (for "
    "example the CIFAR-10 training images in shared/data/cifar10), or prepare "
    "the dataset on a connected machine and point --config.data_dir at it.")


class DataSource(abc.ABC):
  """A named collection of labelled image splits."""

  name: str

  @property
  @abc.abstractmethod
  def split_names(self) -> list[str]:
    """The base split names (without slicing)."""

  @property
  @abc.abstractmethod
  def class_names(self) -> list[str]:
    ...

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  @abc.abstractmethod
  def image_shape(self) -> tuple[int | None, int | None, int]:
    """(H, W, C); H and W are None when images vary in size."""

  @abc.abstractmethod
  def num_examples(self, split: str) -> int:
    """Number of examples in a (possibly sliced) split."""

  @abc.abstractmethod
  def read(self, split: str, *, process_index: int = 0,
           process_count: int = 1, decode: bool = True) -> tf.data.Dataset:
    """This process's share of ``split``, in a fixed order.

    ``decode=False`` leaves images as stored (file bytes, paths) for
    :meth:`decode` to finish later: a reader that keeps a few examples out
    of many decodes only those.
    """

  def decode(self, example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Finishes an example read with ``decode=False``."""
    return example

  def encoded_image(self, example: dict[str, tf.Tensor]) -> tf.Tensor | None:
    """The image file's bytes of an example read with ``decode=False``, or
    None where the source holds pixels: with the bytes, a random crop decodes
    only its window (``inception_crop.crop_encoded``)."""
    del example
    return None

  def undecodable(self, split: str) -> list[str]:
    """What cannot be decoded in ``split``: one line per bad example, naming
    it and the fix. [] when all decode, or when the source cannot tell which
    (the pipeline then reports TensorFlow's own error)."""
    del split
    return []

  def has_split(self, split: str) -> bool:
    try:
      self.num_examples(split)
    except DatasetError:
      return False
    return True

  def describe(self) -> dict[str, Any]:
    return dict(name=self.name, num_classes=self.num_classes,
                class_names=self.class_names,
                image_shape=list(self.image_shape),
                splits={s: self.num_examples(s) for s in self.split_names})


def _absolute_ranges(split: str,
                     split_sizes: dict[str, int]) -> list[tuple[str, int, int]]:
  """Resolves TFDS slicing syntax to (split, start, stop) triples."""
  infos = {
      name: tfds.core.SplitInfo(name=name, shard_lengths=[n], num_bytes=0)
      for name, n in split_sizes.items()
  }
  try:
    instruction = tfds.core.ReadInstruction.from_spec(split)
    absolute = instruction.to_absolute(infos)
  except (ValueError, AssertionError, KeyError) as e:
    reason = str(e).rstrip(".")
    if "Should be one of" not in reason:
      reason += f" (splits: {sorted(split_sizes)})"
    raise DatasetError(
        f"Cannot use split {split!r}: {reason}. Slicing such as "
        "'train[:90%]' or 'train[45000:]' is supported.") from None
  out = []
  for a in absolute:
    n = split_sizes[a.splitname]
    start = 0 if a.from_ is None else a.from_
    stop = n if a.to is None else a.to
    out.append((a.splitname, start, stop))
  return out


def _process_slice(n: int, process_index: int,
                   process_count: int) -> tuple[int, int]:
  """Contiguous, near-equal share of n items (as tfds.even_splits does)."""
  per, extra = divmod(n, process_count)
  start = process_index * per + min(process_index, extra)
  return start, start + per + (1 if process_index < extra else 0)


class _IndexedSource(DataSource):
  """A source whose splits are lists held in memory (arrays or file paths)."""

  @abc.abstractmethod
  def _split_items(self, split_name: str) -> tuple[Any, np.ndarray]:
    """(items, labels) of a base split; items index like a numpy array."""

  @abc.abstractmethod
  def _decode(self, item: tf.Tensor) -> tf.Tensor:
    ...

  @functools.cached_property
  def _sizes(self) -> dict[str, int]:
    return {s: len(self._split_items(s)[1]) for s in self.split_names}

  def num_examples(self, split: str) -> int:
    return sum(stop - start for _, start, stop in
               _absolute_ranges(split, self._sizes))

  def read(self, split, *, process_index=0, process_count=1, decode=True):
    items, labels = [], []
    for name, start, stop in _absolute_ranges(split, self._sizes):
      split_items, split_labels = self._split_items(name)
      items.append(split_items[start:stop])
      labels.append(split_labels[start:stop])
    items = np.concatenate(items)
    labels = np.concatenate(labels).astype(np.int64)
    lo, hi = _process_slice(len(labels), process_index, process_count)
    ds = tf.data.Dataset.from_tensor_slices({"image": items[lo:hi],
                                             "label": labels[lo:hi]})
    if not decode:
      return ds
    return ds.map(self.decode, num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True)

  def decode(self, example):
    return {"image": self._decode(example["image"]), "label": example["label"]}


@dataclasses.dataclass
class DigitsSource(_IndexedSource):
  """scikit-learn's 8x8 handwritten digits (UCI), shipped in its wheel.

  1,797 real images, 0..16 grey levels rescaled to uint8 0..255. The fixed
  ``train`` (1,437) / ``test`` (360) split is a seeded stratified shuffle so
  both splits hold every writer style and class in proportion.
  """

  name: str = "offline:digits"

  @functools.cached_property
  def _arrays(self):
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    # Stratify: within each class keep the shuffled order, then take 20% of
    # every class for test.
    test = np.zeros(len(labels), bool)
    for c in range(10):
      members = order[labels[order] == c]
      test[members[: int(round(0.2 * len(members)))]] = True
    train_idx, test_idx = order[~test[order]], order[test[order]]
    return {"train": (images[train_idx], labels[train_idx]),
            "test": (images[test_idx], labels[test_idx])}

  split_names = property(lambda self: ["train", "test"])
  class_names = property(lambda self: [str(i) for i in range(10)])
  image_shape = property(lambda self: (8, 8, 1))

  def _split_items(self, split_name):
    return self._arrays[split_name]

  def _decode(self, item):
    return item


def decode_like_pil(data: tf.Tensor, channels: int) -> tf.Tensor:
  """Image file bytes -> uint8 (H, W, channels), JPEGs as PIL decodes them.

  TF's default JPEG decoder uses libjpeg's fast integer IDCT, which on the
  CIFAR-10 JPEGs differs from PIL's (the accurate one, what torchvision's
  ImageFolder reads) by up to 4 grey levels in 65% of the values
  (benchmarks/results/seed004_augment_vs_torchvision.md); INTEGER_ACCURATE
  gives PIL's bytes exactly, so a seed's folder data is the seed's pixels.
  """
  return tf.cond(
      tf.io.is_jpeg(data),
      lambda: tf.io.decode_jpeg(data, channels=channels,
                                dct_method="INTEGER_ACCURATE"),
      lambda: tf.io.decode_image(data, channels=channels,
                                 expand_animations=False))


@dataclasses.dataclass
class FolderSource(_IndexedSource):
  """Images in ``root/<split>/<class>/<file>``; class ids follow sorted names.

  A split's order is a fixed pseudo-random permutation (seed 0) of the sorted
  file listing: the same on every machine and process, and mixed across
  classes, so a slice such as ``train[90%:]`` samples every class instead of
  holding only the last class folder.
  """

  root: str
  channels: int = 3

  def __post_init__(self):
    self.name = f"folder:{self.root}"
    if not os.path.isdir(self.root):
      raise DatasetError(
          f"Dataset folder {self.root!r} does not exist. 'folder:PATH' expects "
          "PATH/<split>/<class>/*.jpg|png (for example PATH/train/cat/0001.jpg).")
    splits = sorted(d for d in os.listdir(self.root)
                    if os.path.isdir(os.path.join(self.root, d)))
    if not splits:
      raise DatasetError(
          f"Dataset folder {self.root!r} has no split folders; expected "
          f"{self.root}/<split>/<class>/*.jpg|png.")
    self._listing = {s: self._list_split(s) for s in splits}
    classes = sorted(set(self._listing[splits[0]][1]))
    for s in splits:
      if sorted(set(self._listing[s][1])) != classes:
        raise DatasetError(
            f"Split folders of {self.root!r} disagree on the classes: "
            f"{splits[0]} has {classes}, {s} has "
            f"{sorted(set(self._listing[s][1]))}.")
    self._classes = classes

  def _list_split(self, split):
    split_dir = os.path.join(self.root, split)
    paths, class_of = [], []
    for cls in sorted(os.listdir(split_dir)):
      cls_dir = os.path.join(split_dir, cls)
      if not os.path.isdir(cls_dir):
        continue
      for f in sorted(os.listdir(cls_dir)):
        if f.lower().endswith(_IMAGE_EXTENSIONS):
          paths.append(os.path.join(cls_dir, f))
          class_of.append(cls)
    if not paths:
      raise DatasetError(
          f"No images (*.jpg, *.png, ...) under {split_dir}/<class>/.")
    order = np.random.default_rng(0).permutation(len(paths))
    return np.array(paths)[order], np.array(class_of)[order]

  @property
  def split_names(self):
    return sorted(self._listing)

  @property
  def class_names(self):
    return list(self._classes)

  @functools.cached_property
  def image_shape(self):
    # The first image fixes the shape; folders of mixed sizes still work
    # because the pipeline resizes, but then H and W are reported as None.
    first = sorted(self._listing[self.split_names[0]][0])[0]
    h, w = tf.io.decode_image(tf.io.read_file(first), channels=self.channels,
                              expand_animations=False).shape[:2]
    return (int(h), int(w), self.channels)

  def _split_items(self, split_name):
    paths, class_of = self._listing[split_name]
    index = {c: i for i, c in enumerate(self._classes)}
    return paths, np.array([index[c] for c in class_of], np.int64)

  def _decode(self, item):
    return tf.ensure_shape(decode_like_pil(tf.io.read_file(item),
                                           self.channels),
                           [None, None, self.channels])

  def encoded_image(self, example):
    return tf.io.read_file(example["image"])

  def undecodable(self, split):
    # Decode every file of the split once more, in parallel in tf.data, each
    # with its index; ignore_errors() drops the ones whose decoding fails,
    # so the missing indices are the bad files. No Python per image.
    paths = self.read(split, decode=False).map(lambda example: example["image"])
    decoded = (paths.enumerate()
               .map(lambda i, path: (i, tf.shape(self._decode(path))),
                    num_parallel_calls=tf.data.AUTOTUNE)
               .ignore_errors()
               .map(lambda i, unused_shape: i))
    good = set(decoded.as_numpy_iterator())
    return [describe_image_problem(path.decode(), self.channels)
            for i, path in enumerate(paths.as_numpy_iterator())
            if i not in good]


class MockSource(_IndexedSource):
  """Seeded random uint8 images shaped like a TFDS dataset: smoke runs only.

  Shape and classes come from the builder's code-defined metadata, which needs
  no download. Images of variable size (e.g. food101) are made 64x64.
  """

  SPLIT_SIZES = {"train": 256, "validation": 64, "test": 64}

  def __init__(self, tfds_name: str):
    self.name = f"mock:{tfds_name}"
    try:
      features = tfds.builder(tfds_name).info.features
    except tfds.core.registered.DatasetNotFoundError:
      raise DatasetError(f"mock:{tfds_name}: no TFDS dataset named "
                         f"{tfds_name!r}.") from None
    h, w, c = features["image"].shape
    self._shape = (h or 64, w or 64, c or 3)
    self._classes = list(features["label"].names)

  split_names = property(lambda self: list(self.SPLIT_SIZES))
  class_names = property(lambda self: self._classes)
  image_shape = property(lambda self: self._shape)

  @functools.lru_cache(maxsize=None)
  def _split_items(self, split_name):
    n = self.SPLIT_SIZES[split_name]
    rng = np.random.default_rng(list(self.SPLIT_SIZES).index(split_name))
    images = rng.integers(0, 256, (n, *self._shape), dtype=np.uint8)
    return images, rng.integers(0, len(self._classes), n)

  def _decode(self, item):
    return item


class TfdsSource(DataSource):
  """Any TFDS dataset, read in a fixed order (16 files at once) with images
  decoded lazily."""

  def __init__(self, tfds_name: str, *, data_dir: str | None = None,
               manual_dir: str | None = None, download: bool = True,
               image_key: str = "image", label_key: str = "label"):
    self.name = f"tfds:{tfds_name}"
    self._image_key, self._label_key = image_key, label_key
    try:
      self._builder = tfds.builder(tfds_name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      first_line = str(e).splitlines()[0]
      raise DatasetError(
          f"{first_line} Use a TFDS name (see tfds.list_builders()), "
          "'folder:PATH' or one of the offline datasets "
          f"{['offline:' + d for d in OFFLINE_DATASETS]}.") from None
    self._ensure_available(manual_dir=manual_dir, download=download)
    features = self._builder.info.features
    for key in (image_key, label_key):
      if key not in features:
        raise DatasetError(
            f"{self.name} has no feature {key!r}; its features are "
            f"{list(features)}.")

  def _ensure_available(self, *, manual_dir, download):
    # Reading is the test: it works for prepared data and for mocked builders
    # (tfds.testing.mock_data), and fails at once when the data is missing.
    try:
      self._builder.as_dataset(
          split=next(iter(self._builder.info.splits), "train"))
      return
    except AssertionError:  # "could not find data in DATA_DIR"
      pass
    where = self._builder.data_dir
    if not download:
      raise DatasetError(
          f"{self.name} is not prepared in {where} and downloads are off "
          "(config.download=False). Prepare it with "
          f"`tfds build {self._builder.name}` or set --config.data_dir.")
    if not network_available():
      raise DatasetError(f"{self.name} is not prepared in {where}. "
                         + _OFFLINE_HINT)
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    self._builder.download_and_prepare(download_config=download_config)

  @property
  def split_names(self):
    if self._builder.info.splits:
      return list(self._builder.info.splits)
    return list(self._mock_sizes)

  @property
  def class_names(self):
    return list(self._builder.info.features[self._label_key].names)

  @property
  def image_shape(self):
    h, w, c = self._builder.info.features[self._image_key].shape
    return (h, w, c)

  @functools.cached_property
  def _mock_sizes(self) -> dict[str, int]:
    # Mocked builders (tfds.testing.mock_data) carry no split metadata: count.
    sizes = {}
    for name in ("train", "validation", "test"):
      try:
        ds = self._builder.as_dataset(split=name)
      except (ValueError, KeyError, AssertionError):
        continue
      sizes[name] = int(ds.reduce(0, lambda n, _: n + 1))
    return sizes

  def num_examples(self, split):
    if self._builder.info.splits:
      try:
        return self._builder.info.splits[split].num_examples
      except (KeyError, ValueError, AssertionError) as e:
        raise DatasetError(
            f"Cannot use split {split!r} of {self.name}: {e}. Available "
            f"splits: {self.split_names}.") from None
    return sum(b - a for _, a, b in _absolute_ranges(split, self._mock_sizes))

  def read(self, split, *, process_index=0, process_count=1, decode=True):
    if not self._builder.info.splits:
      # Mocked builder: slice by hand so the syntax behaves as with real data.
      parts = [self._builder.as_dataset(split=name).skip(a).take(b - a)
               for name, a, b in _absolute_ranges(split, self._mock_sizes)]
      ds = functools.reduce(lambda x, y: x.concatenate(y), parts)
      lo, hi = _process_slice(self.num_examples(split), process_index,
                              process_count)
      ds = ds.skip(lo).take(hi - lo)
    else:
      self.num_examples(split)  # Validates the split with a clear error.
      process_split = tfds.even_splits(split, n=process_count)[process_index]
      ds = self._builder.as_dataset(
          split=process_split, shuffle_files=False,
          decoders={self._image_key: tfds.decode.SkipDecoding()},
          read_config=tfds.ReadConfig(
              interleave_cycle_length=_TFDS_FILES_AT_ONCE,
              interleave_block_length=1))
    ds = ds.map(lambda ex: {"image": ex[self._image_key],
                            "label": tf.cast(ex[self._label_key], tf.int64)})
    if not decode:
      return ds
    return ds.map(self.decode, num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True)

  def decode(self, example):
    image = example["image"]
    if image.dtype == tf.string:
      image = decode_like_pil(image, self.image_shape[2])
    return {"image": image, "label": example["label"]}

  def encoded_image(self, example):
    image = example["image"]
    return image if image.dtype == tf.string else None


def network_available(host: str = "storage.googleapis.com", port: int = 443,
                      timeout: float = 3.0) -> bool:
  """A quick reachability probe of TFDS's own data bucket."""
  try:
    with socket.create_connection((host, port), timeout=timeout):
      return True
  except OSError:
    return False


# ----------------------------------------------------------------------------
# The kinds of dataset string: the built-in ones and those of register_source.
# ----------------------------------------------------------------------------
# A factory makes the source of a dataset string from the text after
# "kind:" and the TFDS options of the config (which it may ignore).
SourceFactory = Callable[..., DataSource]


@dataclasses.dataclass(frozen=True)
class _Kind:
  factory: SourceFactory
  usage: str  # How the kind is written, for error messages.


def _offline_source(rest: str, **unused_options) -> DataSource:
  if rest == "digits":
    return DigitsSource()
  raise DatasetError(f"Unknown offline dataset {rest!r}; known: "
                     f"{list(OFFLINE_DATASETS)}.")


_KINDS: dict[str, _Kind] = {
    "tfds": _Kind(lambda rest, **options: TfdsSource(rest, **options),
                  "tfds:NAME"),
    "folder": _Kind(lambda rest, **unused: FolderSource(
        os.path.expanduser(rest)), "folder:PATH"),
    "offline": _Kind(_offline_source, "offline:digits"),
    "mock": _Kind(lambda rest, **unused: MockSource(rest), "mock:NAME"),
}
_BUILTIN_KINDS = frozenset(_KINDS)


def register_source(kind: str, factory: SourceFactory) -> None:
  """Makes ``kind:NAME`` a dataset string, served by ``factory``.

  ``factory(name, *, data_dir, manual_dir, download)`` returns the
  :class:`DataSource` of ``kind:name`` (``name``: the text after the first
  colon; the keywords: ``config.data_dir`` / ``manual_dir`` (``None`` when
  unset) and ``config.download``, which a source that is not TFDS ignores, so
  ``def factory(name, **options)`` is enough). It should raise
  :class:`DatasetError` for a name it cannot serve.

  Call it at import time of your own module and list that module in
  ``config.source_modules``: training, evaluation, bench and explain import
  it before they resolve ``config.dataset``. The built-in kinds (tfds,
  folder, offline, mock) are reserved and a kind registers once.
  """
  if (not isinstance(kind, str) or not re.fullmatch(r"[A-Za-z][\w.-]*", kind)):
    raise ValueError(
        f"Dataset kind {kind!r} must be a non-empty name of letters, digits, "
        "'_', '.' or '-' starting with a letter (no ':').")
  if not callable(factory):
    raise TypeError(f"register_source({kind!r}, ...): the factory must be "
                    f"callable, got {factory!r}.")
  if kind in _BUILTIN_KINDS:
    raise ValueError(
        f"Dataset kind {kind!r} is built in and reserved "
        f"({sorted(_BUILTIN_KINDS)}); register your source under another "
        "name.")
  if kind in _KINDS:
    other = _KINDS[kind].factory
    raise ValueError(
        f"Dataset kind {kind!r} is already registered (by "
        f"{getattr(other, '__module__', '?')}."
        f"{getattr(other, '__qualname__', repr(other))}); pick another kind.")
  _KINDS[kind] = _Kind(factory, f"{kind}:...")


def known_kinds() -> list[str]:
  """The dataset kinds, built in and registered, in registration order."""
  return list(_KINDS)


def _known_usages() -> str:
  return ", ".join(repr(k.usage) for k in _KINDS.values())


def get_source(name: str, *, data_dir: str | None = None,
               manual_dir: str | None = None,
               download: bool = True) -> DataSource:
  """Resolves a dataset string (see the module docstring)."""
  kind, sep, rest = name.partition(":")
  if not sep or not rest:
    raise DatasetError(
        f"Dataset {name!r} has no kind prefix. Use one of "
        f"{_known_usages()} (e.g. 'tfds:cifar10').")
  if kind not in _KINDS:
    raise DatasetError(
        f"Unknown dataset kind {kind!r} in {name!r}. Known kinds: "
        f"{_known_usages()}. A kind of your own is registered with "
        "jaxattn.data.sources.register_source in a module listed in "
        "config.source_modules.")
  source = _KINDS[kind].factory(rest, data_dir=data_dir,
                                manual_dir=manual_dir, download=download)
  if not isinstance(source, DataSource):
    raise TypeError(
        f"The factory of dataset kind {kind!r} returned "
        f"{type(source).__name__}, not a jaxattn.data.sources.DataSource.")
  return source
