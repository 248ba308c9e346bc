"""Image files without TensorFlow equal the input pipeline's examples:
decoding byte for byte, the evaluation preprocessing to float32 rounding."""

import numpy as np
import pytest
from PIL import Image

from jaxattn import configlib
from jaxattn.data import DatasetError, image_files, pipeline, sources
from jaxattn.data.tf_import import tf

_RNG = np.random.default_rng(0)
_RGB = _RNG.integers(0, 256, (37, 29, 3), dtype=np.uint8)
_GREY16 = _RNG.integers(0, 65536, (37, 29), dtype=np.uint16)


def _write(path, mode, fmt):
  image = (Image.fromarray(_GREY16) if mode == "I;16"
           else Image.fromarray(_RGB).convert(mode))
  image.save(path, fmt)
  return str(path)


# (mode, format): what PIL writes and TensorFlow's decoders read.
_FILES = [("RGB", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("L", "PNG"),
          ("LA", "PNG"), ("1", "PNG"), ("I;16", "PNG"), ("RGB", "JPEG"),
          ("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "BMP"), ("L", "BMP"),
          ("RGB", "GIF")]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("mode,fmt", _FILES)
def test_decode_gives_the_pipeline_bytes(tmp_path, mode, fmt, channels):
  path = _write(tmp_path / f"image.{fmt.lower()}", mode, fmt)
  try:
    expected = sources.decode_like_pil(tf.io.read_file(path), channels).numpy()
  except tf.errors.InvalidArgumentError:
    if (mode, channels) == ("CMYK", 1):  # Refused by both.
      with pytest.raises(DatasetError, match="a CMYK JPEG"):
        image_files.decode(path, channels)
      return
    # TensorFlow decodes no BMP or GIF to one channel; PIL does.
    assert fmt in ("BMP", "GIF") and channels == 1
    assert image_files.decode(path, channels).shape == (37, 29, 1)
    return
  np.testing.assert_array_equal(image_files.decode(path, channels), expected)


def test_decode_names_a_truncated_file(tmp_path):
  path = _write(tmp_path / "cut.png", "RGB", "PNG")
  with open(path, "rb") as f:
    head = f.read(200)
  with open(path, "wb") as f:
    f.write(head)
  with pytest.raises(DatasetError, match="cut.png: not a readable image"):
    image_files.decode(path, 3)


@pytest.mark.parametrize("shape,size,fraction", [
    ((8, 8, 1), (16, 16), 0.0),      # The quickstart's upsampling.
    ((16, 16, 1), (16, 16), 0.0),    # No resize.
    ((37, 29, 3), (16, 16), 0.0),    # Downsampling, antialiased.
    ((300, 200, 3), (224, 224), 0.875),  # Resize to cover, centre crop.
    ((17, 90, 3), (32, 24), 0.5),
    ((64, 64, 3), (64, 64), 1.0),
])
def test_preprocess_for_eval_equals_the_pipeline(shape, size, fraction):
  config = configlib.base_config()
  config.image_size, config.eval_crop_fraction = size, fraction
  config.pixel_mean = config.pixel_std = (0.5,) * shape[2]
  image = _RNG.integers(0, 256, shape, dtype=np.uint8)
  expected = pipeline.preprocess_for_eval(tf.constant(image), config).numpy()
  got = image_files.preprocess_for_eval(image, config)
  assert got.dtype == np.float32 and got.shape == expected.shape
  np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)


def test_a_bad_crop_fraction_is_refused_alike():
  config = configlib.base_config()
  config.eval_crop_fraction = 1.5
  image = np.zeros((8, 8, 3), np.uint8)
  for preprocess in (image_files.preprocess_for_eval,
                     pipeline.preprocess_for_eval):
    with pytest.raises(ValueError, match=r"eval_crop_fraction=1.5 must be"):
      preprocess(image, config)
