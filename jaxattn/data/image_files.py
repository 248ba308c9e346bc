"""Image files as evaluation sees them, without TensorFlow (PIL and JAX).

predict, explain (and so ``jaxattn.inference``) read files with this, so they
run where the ``data`` extra is not installed. It reproduces the two
functions of the input pipeline that evaluation applies to an example:

* :func:`decode` is ``sources.decode_like_pil``: TensorFlow's decoders, whose
  three-channel bytes are PIL's (JPEGs with libjpeg's accurate IDCT, PIL's
  default). For one channel TensorFlow does not convert as PIL's
  ``convert("L")`` does, so neither does this: a JPEG gives libjpeg's own
  grey (its luma plane), other colour images libpng's fixed-point grey, and a
  16-bit grey image its high byte.
* :func:`preprocess_for_eval` is ``pipeline.preprocess_for_eval``: the
  antialiased bilinear resize (``jax.image.resize`` computes TensorFlow's
  scale-and-translate), or the aspect-preserving resize and centre crop of
  ``config.eval_crop_fraction``, then [0, 1] and normalisation.

``tests/data/test_image_files.py`` holds both equal to the pipeline's: bytes
for decoding, float32 rounding for the resize.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from PIL import Image

from jaxattn.configlib import ConfigError
from jaxattn.data import DatasetError

# libpng's RGB -> grey weights (0.299, 0.587 and the rest, in 1/32768), which
# TensorFlow's PNG decoder uses for one channel, rounding down.
_GREY_WEIGHTS = np.array([9797, 19234, 3737], np.uint32)
_SIXTEEN_BIT_GREY = ("I;16", "I;16B", "I;16L", "I")


def describe_image_problem(path: str, channels: int) -> str:
  """Why the file ``path`` cannot be decoded to ``channels`` channels, and
  what to do about it, as PIL sees the file.

  Only for the error path (it opens the file in Python): TensorFlow's own
  message names neither the file nor the cause.
  """
  try:
    with Image.open(path) as image:
      image.load()  # Decodes every byte: finds truncated files too.
      kind, mode, bands = image.format, image.mode, len(image.getbands())
  except (OSError, SyntaxError, ValueError) as e:  # What PIL raises on bad data.
    return (f"{path}: not a readable image ({e}); remove it, or re-save it "
            "as PNG or JPEG.")
  target = "L" if channels == 1 else "RGB"
  if kind == "JPEG" and mode == "CMYK":
    return (f"{path}: a CMYK JPEG (4 channels), which TensorFlow cannot turn "
            f"into the {channels}-channel images the model reads; convert it, "
            f"e.g. PIL.Image.open(f).convert({target!r}).save(f).")
  return (f"{path}: a {kind} image in mode {mode} ({bands} channel(s)) that "
          f"TensorFlow cannot decode to {channels} channel(s); re-save it as a "
          f"PNG or JPEG in mode {target}.")


def decode(path: str, channels: int) -> np.ndarray:
  """uint8 [H, W, channels] of an image file, as the input pipeline decodes
  it; a file it cannot decode raises DatasetError naming the cause and fix."""
  if channels not in (1, 3):
    raise ValueError(f"channels={channels} must be 1 or 3.")
  try:
    with Image.open(path) as image:
      if image.format == "JPEG" and channels == 1:
        image.draft("L", None)  # libjpeg decodes straight to grey.
      image.load()  # Decodes every byte: finds truncated files too.
      pixels = _pixels(image, channels)
  except (OSError, SyntaxError, ValueError):  # What PIL raises on bad data.
    pixels = None
  if pixels is None:
    raise DatasetError(describe_image_problem(path, channels))
  return pixels


def _pixels(image: Image.Image, channels: int) -> np.ndarray | None:
  """A loaded image's uint8 [H, W, channels]; None where TensorFlow's
  decoders give none (a CMYK JPEG to one channel)."""
  if image.mode in _SIXTEEN_BIT_GREY:  # TensorFlow keeps the high byte.
    image = Image.fromarray(
        (np.asarray(image, np.uint32) >> 8).astype(np.uint8))
  if channels == 3:
    return np.asarray(image.convert("RGB"))
  if image.mode == "CMYK":
    return None
  if image.mode in ("1", "L", "LA"):
    return np.asarray(image.convert("L"))[..., None]
  rgb = np.asarray(image.convert("RGB"), np.uint32)
  return ((rgb @ _GREY_WEIGHTS) >> 15).astype(np.uint8)[..., None]


def eval_crop_fraction(config: ml_collections.ConfigDict) -> float:
  """config.eval_crop_fraction, checked: 0 or in (0, 1]."""
  fraction = float(config.get("eval_crop_fraction", 0.0))  # Older workdirs.
  if not (fraction == 0 or 0 < fraction <= 1):
    raise ConfigError(
        f"config.eval_crop_fraction={fraction} must be 0 (resize to "
        "config.image_size) or in (0, 1] (e.g. 0.875: resize to cover "
        "image_size / 0.875, then centre-crop image_size).")
  return fraction


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Bilinear, antialiased resize of float32 [H, W, C] (a no-op at size)."""
  if tuple(image.shape[:2]) == tuple(size):
    return image
  return np.asarray(jax.image.resize(image, (*size, image.shape[2]),
                                     method="linear", antialias=True))


def _resize_and_centre_crop(image: np.ndarray, size: tuple[int, int],
                            fraction: float) -> np.ndarray:
  """The pipeline's ``_resize_and_centre_crop``: the side with the largest
  ``size / side`` becomes ``floor(size / fraction)``, the other keeps the
  aspect ratio (floored), and the centre ``size`` is cropped (offsets
  rounded half to even)."""
  hw = np.array(image.shape[:2], np.float64)
  target = np.array(size, np.float64)
  binding = int(np.argmax(target / hw))
  new_binding = np.floor(target[binding] / fraction)
  resized = np.where(np.arange(2) == binding, new_binding,
                     np.floor(hw * new_binding / hw[binding]))
  resized = np.maximum(resized.astype(np.int64), size)
  top, left = np.round((resized - size) / 2).astype(np.int64)
  image = _resize(image, (int(resized[0]), int(resized[1])))
  return image[top:top + size[0], left:left + size[1]]


def preprocess_for_eval(image: np.ndarray,
                        config: ml_collections.ConfigDict) -> np.ndarray:
  """uint8 [H, W, C] -> float32 at config.image_size, normalised, as
  ``pipeline.preprocess_for_eval`` makes it."""
  size = tuple(int(s) for s in config.image_size)
  fraction = eval_crop_fraction(config)
  image = np.asarray(image, np.float32)
  if fraction == 0:
    image = _resize(image, size)
  else:
    image = _resize_and_centre_crop(image, size, fraction)
  image = image / np.float32(255.0)
  mean = np.asarray(config.pixel_mean, np.float32)
  std = np.asarray(config.pixel_std, np.float32)
  return ((image - mean) / std).astype(np.float32)
