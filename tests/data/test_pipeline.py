"""Training streams resume exactly; evaluation sees every example once."""

import collections

import numpy as np
import pytest

from jaxattn import recipes
from jaxattn.data import pipeline, sources
from tests.data.helpers import small_config
from tests.data.helpers import take_batches as _batches


def _config(**overrides):
  return small_config((8, 8), **overrides)


@pytest.mark.parametrize("augmented", [False, True])
def test_resumed_stream_equals_uninterrupted(augmented):
  src = sources.get_source("offline:digits")
  c = _config()
  if augmented:  # Seed 004's full recipe: every random op must be seeded.
    c.augment = recipes.seed004_conv_vit().augment
    c.image_size = (16, 16)
  shard = pipeline.ProcessShard(0, 1, 16)
  spe = 200 // 16  # 12 steps per epoch.
  full = _batches(pipeline.create_train_dataset(
      src, c, shard=shard, steps_per_epoch=spe, num_epochs=3))
  assert len(full) == 3 * spe
  for start in (5, spe, spe + 7):
    resumed = _batches(pipeline.create_train_dataset(
        src, c, shard=shard, steps_per_epoch=spe, num_epochs=3,
        start_step=start))
    assert len(resumed) == len(full) - start
    for a, b in zip(full[start:], resumed):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])
  # Epochs are differently shuffled permutations of the same examples.
  epoch0 = np.concatenate([b["label"] for b in full[:spe]])
  epoch1 = np.concatenate([b["label"] for b in full[spe:2 * spe]])
  assert not np.array_equal(epoch0, epoch1)
  if not augmented:
    all_labels = [int(x["label"]) for x in src.read("train[:200]")
                  .as_numpy_iterator()]
    assert collections.Counter(epoch0) <= collections.Counter(all_labels)


@pytest.mark.parametrize("process_count", [2, 4])
@pytest.mark.parametrize("cache", [False, True])
def test_global_order_splits_the_single_process_batches(process_count, cache):
  """Process p's rows of global batch b are rows p*L..(p+1)*L-1 of the
  single-process batch b, augmentation and resume included: the training
  result cannot depend on the number of processes."""
  src = sources.get_source("offline:digits")
  c = _config(cache=cache)
  c.augment = recipes.seed004_conv_vit().augment
  c.image_size = (16, 16)
  spe, global_batch = 200 // 16, 16
  local = global_batch // process_count
  single = _batches(pipeline.create_train_dataset(
      src, c, shard=pipeline.ProcessShard(0, 1, global_batch),
      steps_per_epoch=spe, num_epochs=2, start_step=3))
  parts = [_batches(pipeline.create_train_dataset(
      src, c, shard=pipeline.ProcessShard(p, process_count, local),
      steps_per_epoch=spe, num_epochs=2, start_step=3))
           for p in range(process_count)]
  assert all(len(part) == len(single) == 2 * spe - 3 for part in parts)
  for b, batch in enumerate(single):
    for key in ("image", "label"):
      np.testing.assert_array_equal(
          np.concatenate([part[b][key] for part in parts]), batch[key])


def test_seed_changes_order_and_augmentation():
  src = sources.get_source("offline:digits")
  shard = pipeline.ProcessShard(0, 1, 16)
  a = _batches(pipeline.create_train_dataset(
      src, _config(seed=0), shard=shard, steps_per_epoch=12, num_epochs=1), 1)
  b = _batches(pipeline.create_train_dataset(
      src, _config(seed=1), shard=shard, steps_per_epoch=12, num_epochs=1), 1)
  assert not np.array_equal(a[0]["image"], b[0]["image"])


@pytest.mark.parametrize("process_count", [1, 3])
def test_eval_sees_every_example_once(process_count):
  src = sources.get_source("offline:digits")
  c = _config()
  n = src.num_examples("test")  # 359: no batch size divides it evenly.
  expected = collections.Counter(
      (int(x["label"]), x["image"].tobytes())
      for x in src.read("test").as_numpy_iterator())
  seen = collections.Counter()
  batch_counts = set()
  for p in range(process_count):
    shard = pipeline.ProcessShard(p, process_count, 32)
    ds, num_batches = pipeline.create_eval_dataset(src, "test", c, shard=shard)
    batches = _batches(ds)
    assert len(batches) == num_batches
    batch_counts.add(num_batches)
    assert all(b["image"].shape[0] == 32 for b in batches)
    for b in batches:
      for image, label, mask in zip(b["image"], b["label"], b["mask"]):
        if mask:
          # Undo the eval preprocessing (identity resize, /255) to compare.
          raw = np.round(image * 255).astype(np.uint8)
          seen[(int(label), raw.tobytes())] += 1
  assert len(batch_counts) == 1  # Every process runs the same number.
  assert sum(seen.values()) == n
  assert seen == expected


def test_eval_preprocessing_normalises_and_resizes():
  src = sources.get_source("offline:digits")
  c = _config(image_size=(16, 16), pixel_mean=(0.5,), pixel_std=(0.25,))
  ds, _ = pipeline.create_eval_dataset(
      src, "test[:4]", c, shard=pipeline.ProcessShard(0, 1, 4))
  images = _batches(ds)[0]["image"]
  assert images.shape == (4, 16, 16, 1) and images.dtype == np.float32
  assert images.min() >= -2.0 - 1e-6 and images.max() <= 2.0 + 1e-6


@pytest.mark.parametrize("image_size", [(8, 8), (24, 24)])
def test_images_of_mixed_sizes_are_cropped_as_one_by_one(tmp_path, image_size):
  """A source without a static image size is batched padded to the largest
  image; each row must be its own image's augmentation, whether the padded
  canvas is cropped as one batch (24 x 24 output) or image by image (8 x 8:
  the canvas is too large for the batched crop)."""
  import tensorflow as tf

  rng = np.random.default_rng(0)
  for k in range(8):
    h, w = int(rng.integers(5, 41)), int(rng.integers(5, 31))
    folder = tmp_path / "train" / ("ab"[k % 2])
    folder.mkdir(parents=True, exist_ok=True)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    (folder / f"{k}.png").write_bytes(tf.io.encode_png(image).numpy())
  src = sources.get_source(f"folder:{tmp_path}")
  c = _config(train_split="train", shuffle_buffer=1)  # Source order.
  c.augment = recipes.seed004_conv_vit().augment
  c.augment.crop_scale = (0.08, 1.0)
  c.image_size = image_size
  shard = pipeline.ProcessShard(0, 1, 4)
  batches = _batches(pipeline.create_train_dataset(
      src, c, shard=shard, steps_per_epoch=2, num_epochs=1))
  assert len(batches) == 2
  examples = list(src.read("train").as_numpy_iterator())
  for step, batch in enumerate(batches):
    rows = examples[4 * step:4 * step + 4]
    assert batch["image"].shape == (4, *image_size, 3)
    seed = tf.constant([c.seed, step], tf.int64)
    params = pipeline.sample_train_augmentation(
        seed, 4, [r["image"].shape[0] for r in rows],
        [r["image"].shape[1] for r in rows], c)
    for b, row in enumerate(rows):
      expected = pipeline.augment_train_batch(
          row["image"][None], {k: v[b:b + 1] for k, v in params.items()}, c)
      np.testing.assert_array_equal(batch["image"][b], expected[0])
      assert batch["label"][b] == row["label"]


# ----------------------------------------------------------------------------
# config.eval_crop_fraction: shorter-side resize + centre crop in evaluation.
# ----------------------------------------------------------------------------
def _centre_pattern_image(height, width):
  """Smooth gradients with an 8-pixel checkerboard at the centre (uint8)."""
  y, x = np.mgrid[:height, :width]
  image = np.stack([x * 255 / width, y * 255 / height,
                    np.full((height, width), 100.0)], -1)
  cy, cx = height // 2, width // 2
  centre = (slice(cy - 8, cy + 8), slice(cx - 8, cx + 8))
  image[(*centre, 2)] = (y[centre] // 4 + x[centre] // 4) % 2 * 255
  return np.round(image).astype(np.uint8)


def _pil_resize(image, height, width):
  """Pillow's bilinear resize (antialiased when shrinking), in float."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return np.stack([np.asarray(Image.fromarray(
      image[..., k].astype(np.float32), mode="F").resize(
          (width, height), Image.BILINEAR)) for k in range(image.shape[-1])],
                  -1)


# (image H, W) -> the torchvision convention for Resize(floor(32 / 0.875)) +
# CenterCrop(32), worked out by hand: the resized (H, W) and the crop's
# (top, left) = round((resized - 32) / 2), half to even.
@pytest.mark.parametrize("shape,resized,corner", [
    ((40, 60), (36, 54), (2, 11)),  # floor(36 * 60 / 40) = 54.
    ((60, 40), (54, 36), (11, 2)),
    ((40, 62), (36, 55), (2, 12)),  # floor(55.8) = 55; round(11.5) = 12.
    ((36, 36), (36, 36), (2, 2)),  # Already at the resize target.
])
def test_eval_crop_is_the_centre_of_the_shorter_side_resize(shape, resized,
                                                            corner):
  import tensorflow as tf

  image = _centre_pattern_image(*shape)
  c = _config(image_size=(32, 32), eval_crop_fraction=0.875,
              pixel_mean=(0.5,), pixel_std=(0.25,))
  out = pipeline.preprocess_for_eval(tf.constant(image), c).numpy()
  assert out.shape == (32, 32, 3) and out.dtype == np.float32
  (top, left), (h, w) = corner, resized
  expected = _pil_resize(image, h, w)[top:top + 32, left:left + 32]
  np.testing.assert_allclose((out * 0.25 + 0.5) * 255, expected, atol=0.01)
  # One pixel off is far off: the pattern pins the crop's position.
  shifted = _pil_resize(image, h, w)[top + 1:top + 33, left:left + 32]
  assert np.abs((out * 0.25 + 0.5) * 255 - shifted).max() > 100


def test_eval_crop_fraction_one_is_a_plain_centre_crop():
  import tensorflow as tf

  image = np.random.default_rng(0).integers(0, 256, (32, 48, 1), np.uint8)
  c = _config(image_size=(32, 32), eval_crop_fraction=1.0)
  out = pipeline.preprocess_for_eval(tf.constant(image), c).numpy()
  np.testing.assert_array_equal(out, image[:, 8:40] / np.float32(255))
  # Portrait, a non-square image_size: the width binds (24 / 24 > 16 / 40).
  image = np.random.default_rng(1).integers(0, 256, (40, 24, 1), np.uint8)
  c.image_size = (16, 24)
  out = pipeline.preprocess_for_eval(tf.constant(image), c).numpy()
  np.testing.assert_array_equal(out, image[12:28] / np.float32(255))


def test_eval_crop_fraction_zero_is_the_plain_resize_bit_for_bit():
  import tensorflow as tf

  rng = np.random.default_rng(0)
  c = _config(image_size=(32, 32), pixel_mean=(0.5, 0.4, 0.3),
              pixel_std=(0.2, 0.25, 0.3))
  assert c.eval_crop_fraction == 0
  without_key = _config(image_size=(32, 32), pixel_mean=c.pixel_mean,
                        pixel_std=c.pixel_std)
  del without_key["eval_crop_fraction"]  # A workdir saved before the key.
  mean, std = np.float32(c.pixel_mean), np.float32(c.pixel_std)
  for shape in ((40, 60), (60, 40), (32, 32), (8, 8)):
    image = tf.constant(rng.integers(0, 256, (*shape, 3), np.uint8))
    if shape == (32, 32):  # Today's no-op at the size itself.
      plain = tf.cast(image, tf.float32)
    else:
      plain = tf.image.resize(tf.cast(image, tf.float32), (32, 32),
                              method="bilinear", antialias=True)
    expected = ((plain / 255.0 - mean) / std).numpy()
    for config in (c, without_key):
      np.testing.assert_array_equal(
          pipeline.preprocess_for_eval(image, config).numpy(), expected)


@pytest.mark.parametrize("fraction", [-0.5, 1.5])
def test_eval_crop_fraction_out_of_range_is_refused(fraction):
  import tensorflow as tf

  c = _config(eval_crop_fraction=fraction)
  with pytest.raises(ValueError, match=r"config.eval_crop_fraction=.* must "
                     r"be 0 .* or in \(0, 1\]"):
    pipeline.preprocess_for_eval(tf.zeros([8, 8, 1], tf.uint8), c)


def test_eval_dataset_crops_images_of_mixed_sizes(tmp_path):
  """A folder of mixed sizes: every image is cropped to image_size in the
  tf.data graph as it would be alone."""
  import tensorflow as tf

  rng = np.random.default_rng(0)
  shapes = [(20, 30), (30, 20), (17, 17), (40, 25)]
  for k, shape in enumerate(shapes):
    folder = tmp_path / "test" / "ab"[k % 2]
    folder.mkdir(parents=True, exist_ok=True)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    (folder / f"{k}.png").write_bytes(tf.io.encode_png(image).numpy())
  src = sources.get_source(f"folder:{tmp_path}")
  c = _config(image_size=(16, 16), eval_crop_fraction=0.875)
  ds, _ = pipeline.create_eval_dataset(src, "test", c,
                                       shard=pipeline.ProcessShard(0, 1, 4))
  images = _batches(ds)[0]["image"]
  assert images.shape == (4, 16, 16, 3)
  for row, example in zip(images, src.read("test").as_numpy_iterator()):
    np.testing.assert_allclose(row, pipeline.preprocess_for_eval(
        tf.constant(example["image"]), c).numpy(), atol=1e-6)
