"""Dataset strings, split slicing, per-process shards and offline behaviour."""

import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxattn.data import sources


def _labels(ds):
  return [int(x["label"]) for x in ds.as_numpy_iterator()]


def _images(ds):
  return np.stack([x["image"] for x in ds.as_numpy_iterator()])


def test_digits_are_real_and_split_once():
  src = sources.get_source("offline:digits")
  assert src.num_classes == 10 and src.image_shape == (8, 8, 1)
  train, test = src.num_examples("train"), src.num_examples("test")
  assert train + test == 1797 and 350 <= test <= 370
  images = _images(src.read("train"))
  assert images.dtype == np.uint8 and images.max() == 255
  # Train and test hold different images.
  test_images = {x.tobytes() for x in _images(src.read("test"))}
  overlap = sum(x.tobytes() in test_images for x in images)
  assert overlap < 20  # A few digits are pixel-identical in the UCI set.


def test_slicing_matches_tfds_semantics():
  src = sources.get_source("offline:digits")
  n = src.num_examples("train")
  assert src.num_examples("train[:90%]") + src.num_examples("train[90%:]") == n
  assert src.num_examples("train[10:20]+test[:5]") == 15
  full = _labels(src.read("train"))
  assert _labels(src.read("train[10:20]")) == full[10:20]


def test_process_shards_are_disjoint_and_cover_the_split():
  src = sources.get_source("offline:digits")
  full = _images(src.read("train[:101]"))
  parts = [_images(src.read("train[:101]", process_index=i, process_count=3))
           for i in range(3)]
  assert [len(p) for p in parts] == [34, 34, 33]
  np.testing.assert_array_equal(np.concatenate(parts), full)


def _write_folder(root, splits=("train", "test"), classes=("cat", "dog"),
                  per_class=3, size=(6, 5)):
  for split in splits:
    for c, cls in enumerate(classes):
      d = root / split / cls
      d.mkdir(parents=True)
      for i in range(per_class):
        image = np.full((*size, 3), 40 * c + i, np.uint8)
        (d / f"{i:03d}.png").write_bytes(tf.io.encode_png(image).numpy())
  return root


def test_folder_source(tmp_path):
  src = sources.get_source(f"folder:{_write_folder(tmp_path)}")
  assert src.split_names == ["test", "train"]
  assert src.class_names == ["cat", "dog"] and src.image_shape == (6, 5, 3)
  ds = src.read("train")
  labels, pixels = _labels(ds), _images(ds)[:, 0, 0, 0]
  assert sorted(zip(labels, pixels)) == [(0, 0), (0, 1), (0, 2),
                                         (1, 40), (1, 41), (1, 42)]
  assert labels != sorted(labels)  # Mixed, so slices hold every class.
  assert _labels(src.read("train")) == labels  # ... in a fixed order.
  assert src.num_examples("train[-2:]") == 2


def test_folder_errors(tmp_path):
  with pytest.raises(sources.DatasetError, match="does not exist"):
    sources.get_source(f"folder:{tmp_path / 'nope'}")
  with pytest.raises(sources.DatasetError, match="no split folders"):
    sources.get_source(f"folder:{tmp_path}")
  root = _write_folder(tmp_path / "a", splits=("train",))
  src = sources.get_source(f"folder:{root}")
  with pytest.raises(sources.DatasetError, match=r"one of \['train'\]"):
    src.num_examples("test")


def test_shared_cifar_folder(cifar_folder):
  src = sources.get_source(f"folder:{cifar_folder}")
  assert src.num_examples("train") == 50_000
  assert src.num_classes == 10 and src.image_shape == (32, 32, 3)
  assert src.class_names[0] == "airplane" and src.class_names[-1] == "truck"
  assert src.num_examples("train[90%:]") == 5_000
  # The validation slice holds every class (about 500 each).
  counts = np.bincount(_labels(src.read("train[90%:]")), minlength=10)
  assert counts.min() > 400


def test_tfds_source_on_mock_data():
  with tfds.testing.mock_data(num_examples=12):
    src = sources.get_source("tfds:cifar10")
    assert src.num_classes == 10 and src.image_shape == (32, 32, 3)
    assert src.num_examples("train[:50%]") == 6
    ex = next(src.read("train").as_numpy_iterator())
    assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
    parts = [len(_labels(src.read("train", process_index=i, process_count=2)))
             for i in range(2)]
    assert parts == [6, 6]


def test_tfds_download_fails_fast_offline(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "network_available", lambda: False)
  start = time.time()
  with pytest.raises(sources.DatasetError, match="offline:digits.*folder:PATH"):
    sources.get_source("tfds:cifar10", data_dir=str(tmp_path))
  assert time.time() - start < 30
  with pytest.raises(sources.DatasetError, match="downloads are off"):
    sources.get_source("tfds:cifar10", data_dir=str(tmp_path), download=False)


@pytest.mark.parametrize("name,msg", [
    ("cifar10", "no kind prefix"),
    ("tfds:cifar1O", "not found.*offline:digits"),
    ("offline:mnist", "Unknown offline dataset"),
    ("hub:cifar10", "Unknown dataset kind 'hub'"),
    ("mock:nonexistent_ds", "no TFDS dataset"),
])
def test_bad_dataset_names(name, msg):
  with pytest.raises(sources.DatasetError, match=msg):
    sources.get_source(name)


def test_mock_source_has_the_real_datasets_shape():
  src = sources.get_source("mock:cifar100")
  assert src.num_classes == 100 and src.image_shape == (32, 32, 3)
  assert src.num_examples("train") == 256
  first = _images(src.read("train[:4]"))
  np.testing.assert_array_equal(first, _images(src.read("train[:4]")))


def test_folder_jpegs_decode_to_pils_pixels(tmp_path):
  """torchvision's ImageFolder reads with PIL; TF's default JPEG IDCT is not
  PIL's (up to 4 grey levels apart on CIFAR-10's JPEGs)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  smooth = np.cumsum(rng.integers(-9, 10, size=(4, 32, 32, 3)), axis=2)
  for split in ("train",):
    for i, pixels in enumerate(np.clip(smooth + 128, 0, 255).astype(np.uint8)):
      folder = tmp_path / split / f"c{i % 2}"
      folder.mkdir(parents=True, exist_ok=True)
      Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=75)
      Image.fromarray(pixels).save(folder / f"{i}.png")
  src = sources.get_source(f"folder:{tmp_path}")
  ours = {}
  for path in src._listing["train"][0]:  # pylint: disable=protected-access
    ours[path] = src.decode({"image": tf.constant(path), "label": 0})["image"]
  differs_from_tf_default = False
  for path, image in ours.items():
    pil = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(image.numpy(), pil, err_msg=path)
    if path.endswith(".jpg"):
      default = tf.io.decode_image(tf.io.read_file(path), channels=3).numpy()
      differs_from_tf_default |= bool(np.any(default != pil))
  assert differs_from_tf_default  # Else this test could not fail.
