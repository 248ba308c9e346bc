"""The fast input: TF's Inception crop ("tf_fast"), uint8 batches finished on
the device (standardisation, RandomErasing), a tf.data pool per process."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from jaxattn import configlib, recipes, steps
from jaxattn.configlib import ConfigError
from jaxattn.data import inception_crop, on_device, pipeline, sources
from tests.data.helpers import small_config
from tests.data.helpers import take_batches as _batches


def _config(**overrides):
  return small_config((16, 16), **overrides)


def _seed004_augment(crop_impl):
  augment = recipes.seed004_conv_vit().augment
  augment.crop_scale = (0.08, 1.0)
  augment.crop_impl = crop_impl
  return augment


# ----------------------------------------------------------------------------
# inception_crop: the box, the pixels.
# ----------------------------------------------------------------------------
def test_boxes_stay_in_the_area_and_aspect_ranges_and_follow_the_seed():
  height, width, scale, ratio = 300, 400, (0.05, 1.0), (3 / 4, 4 / 3)
  boxes = np.array([inception_crop.sample_box(
      tf.constant([7, s], tf.int64), height, width, scale=scale,
      ratio=ratio).numpy() for s in range(300)])
  top, left, h, w = boxes.T
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + h <= height).all() and (left + w <= width).all()
  area = h * w / (height * width)
  # TF rounds the box to whole pixels: a pixel's worth of slack.
  assert area.min() >= scale[0] - 0.01 and area.max() <= 1.0
  aspect = w / h
  assert aspect.min() >= ratio[0] - 0.02 and aspect.max() <= ratio[1] + 0.02
  # A spread of boxes, not one: the areas cover most of the range.
  assert area.min() < 0.2 and area.max() > 0.8
  assert len({tuple(b) for b in boxes}) > 250
  again = inception_crop.sample_box(tf.constant([7, 5], tf.int64), height,
                                    width, scale=scale, ratio=ratio).numpy()
  np.testing.assert_array_equal(again, boxes[5])


def test_crop_of_file_bytes_is_the_crop_of_the_decoded_image():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)
  args = dict(scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
  for s in range(5):
    seed = tf.constant([3, s], tf.int64)
    decoded = inception_crop.crop_decoded(tf.constant(image), seed, (32, 32),
                                          **args)
    assert decoded.shape == (32, 32, 3) and decoded.dtype == tf.uint8
    # PNG: decoded whole, then cropped.
    png = inception_crop.crop_encoded(tf.io.encode_png(image), seed,
                                      (32, 32), channels=3, **args)
    np.testing.assert_array_equal(png.numpy(), decoded.numpy())
    # JPEG: only the window is decoded; the same box and pixels as decoding
    # it all, except where libjpeg's chroma upsampling at the window's edge
    # lacks the neighbours outside it (a few values, on this colour noise).
    jpeg_bytes = tf.io.encode_jpeg(image, quality=95)
    jpeg = inception_crop.crop_encoded(jpeg_bytes, seed, (32, 32), channels=3,
                                       **args).numpy().astype(int)
    whole = inception_crop.crop_decoded(tf.io.decode_jpeg(jpeg_bytes), seed,
                                        (32, 32), **args).numpy().astype(int)
    assert np.mean(jpeg == whole) > 0.9
    assert np.abs(jpeg - whole).mean() < 0.5


# ----------------------------------------------------------------------------
# The train pipeline with the fast crop and uint8 output.
# ----------------------------------------------------------------------------
def _jpeg_folder(tmp_path, count=24):
  rng = np.random.default_rng(1)
  for k in range(count):
    h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
    folder = tmp_path / "train" / "abc"[k % 3]
    folder.mkdir(parents=True, exist_ok=True)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    (folder / f"{k}.jpg").write_bytes(tf.io.encode_jpeg(image).numpy())
  return sources.get_source(f"folder:{tmp_path}")


@pytest.mark.parametrize("cache", [False, True])
def test_fast_crop_batches_are_uint8_and_resume_exactly(tmp_path, cache):
  src = _jpeg_folder(tmp_path)
  c = _config(train_split="train", cache=cache)
  c.augment = _seed004_augment("tf_fast")
  shard = pipeline.ProcessShard(0, 1, 4)
  make = lambda start: pipeline.create_train_dataset(
      src, c, shard=shard, steps_per_epoch=6, num_epochs=2, start_step=start,
      standardize=False)
  full = _batches(make(0))
  assert len(full) == 12
  assert full[0]["image"].shape == (4, 16, 16, 3)
  assert full[0]["image"].dtype == np.uint8
  assert full[0]["erase"].shape == (4, 4) and full[0]["erase"].dtype == np.int32
  for start in (3, 6, 8):
    for a, b in zip(full[start:], _batches(make(start))):
      for key in ("image", "label", "erase"):
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("cache", [False, True])
def test_fast_crop_global_order_splits_the_single_process_batches(tmp_path,
                                                                 cache):
  src = _jpeg_folder(tmp_path)
  c = _config(train_split="train", cache=cache)
  c.augment = _seed004_augment("tf_fast")
  single = _batches(pipeline.create_train_dataset(
      src, c, shard=pipeline.ProcessShard(0, 1, 6), steps_per_epoch=4,
      num_epochs=2, start_step=1, standardize=False))
  parts = [_batches(pipeline.create_train_dataset(
      src, c, shard=pipeline.ProcessShard(p, 2, 3), steps_per_epoch=4,
      num_epochs=2, start_step=1, standardize=False)) for p in range(2)]
  assert len(single) == len(parts[0]) == 7
  for b, batch in enumerate(single):
    for key in ("image", "label", "erase"):
      np.testing.assert_array_equal(
          np.concatenate([part[b][key] for part in parts]), batch[key])


def test_fast_and_pillow_exact_crops_differ_and_keep_flip_draws():
  src = sources.get_source("offline:digits")
  shard = pipeline.ProcessShard(0, 1, 16)
  batches = {}
  for impl in pipeline.CROP_IMPLS:
    c = _config()
    c.augment = _seed004_augment(impl)
    batches[impl] = _batches(pipeline.create_train_dataset(
        src, c, shard=shard, steps_per_epoch=12, num_epochs=1,
        standardize=False), 1)[0]
  fast, exact = batches["tf_fast"], batches["pillow_exact"]
  np.testing.assert_array_equal(fast["label"], exact["label"])
  np.testing.assert_array_equal(fast["erase"], exact["erase"])
  assert not np.array_equal(fast["image"], exact["image"])


# ----------------------------------------------------------------------------
# On the device: the same model inputs as the host's float path.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("crop_impl", ["tf_fast", "pillow_exact"])
def test_on_device_standardise_and_erase_equal_the_host_path(crop_impl):
  src = sources.get_source("offline:digits")
  c = _config(pixel_mean=(0.45,), pixel_std=(0.22,))
  c.augment = _seed004_augment(crop_impl)
  c.augment.random_erasing = 0.9  # Most images erased.
  shard = pipeline.ProcessShard(0, 1, 16)
  make = lambda standardize: _batches(pipeline.create_train_dataset(
      src, c, shard=shard, steps_per_epoch=12, num_epochs=1,
      standardize=standardize), 3)
  for raw, host in zip(make(False), make(True)):
    assert "erase" not in host and host["image"].dtype == np.float32
    assert (raw["erase"][:, 2] > 0).sum() > 8
    prepared = jax.jit(lambda b: on_device.prepare_batch(
        b, pixel_mean=c.pixel_mean, pixel_std=c.pixel_std))(raw)
    assert set(prepared) == {"image", "label"}
    np.testing.assert_allclose(np.asarray(prepared["image"]), host["image"],
                               rtol=1e-6, atol=1e-6)
    erased = np.asarray(prepared["image"]) == 0.0
    np.testing.assert_array_equal(erased, host["image"] == 0.0)


def test_erase_matches_augment_erasing_batch():
  from jaxattn.data import augment  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = rng.standard_normal((5, 12, 10, 3)).astype(np.float32)
  boxes = np.array([[0, 0, 0, 0], [1, 2, 3, 4], [0, 0, 12, 10],
                    [11, 9, 1, 1], [4, 0, 2, 10]], np.int32)
  expected = augment.erasing_batch(tf.constant(images), tf.constant(boxes))
  np.testing.assert_array_equal(
      np.asarray(on_device.erase(jnp.asarray(images), jnp.asarray(boxes))),
      expected.numpy())


def test_uint8_eval_batches_are_the_float_ones_rounded():
  src = sources.get_source("offline:digits")
  c = _config(image_size=(20, 20), pixel_mean=(0.5,), pixel_std=(0.25,))
  shard = pipeline.ProcessShard(0, 1, 32)
  raw, _ = pipeline.create_eval_dataset(src, "test", c, shard=shard,
                                        standardize=False)
  host, _ = pipeline.create_eval_dataset(src, "test", c, shard=shard)
  for r, h in zip(_batches(raw), _batches(host)):
    assert r["image"].dtype == np.uint8 and r["image"].shape == (32, 20, 20, 1)
    np.testing.assert_array_equal(r["mask"], h["mask"])
    prepared = np.asarray(on_device.prepare_images(
        r["image"], pixel_mean=c.pixel_mean, pixel_std=c.pixel_std))
    real = r["mask"] > 0  # (Padding is 0 in either dtype, and masked.)
    # Rounding to uint8 moves a value by at most half a grey level.
    np.testing.assert_allclose(prepared[real], h["image"][real],
                               atol=0.5 / 255 / 0.25 + 1e-6)


def test_float_inputs_pass_through_unchanged():
  features = np.random.default_rng(0).standard_normal((4, 10)).astype(
      np.float32)
  out = on_device.prepare_batch({"image": features, "label": np.zeros(4)},
                                pixel_mean=(0.5,), pixel_std=(0.5,))
  np.testing.assert_array_equal(out["image"], features)


class _Linear(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    del train
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


def test_eval_step_standardises_uint8_batches():
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)
  mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
  model = _Linear()
  import optax  # pylint: disable=g-import-not-at-top
  state = steps.create_train_state(jax.random.key(0), model=model,
                                   tx=optax.sgd(0.1), input_shape=(6, 6, 3))
  batch = {"label": np.arange(4) % 3, "mask": np.ones(4, np.float32)}
  floats = (pixels / np.float32(255) - np.float32(mean)) / np.float32(std)
  on_host = steps.eval_step(state, dict(batch, image=floats.astype(
      np.float32)), model=model)
  on_dev = steps.eval_step(state, dict(batch, image=pixels), model=model,
                           pixel_mean=mean, pixel_std=std)
  np.testing.assert_allclose(on_dev.loss.compute(), on_host.loss.compute(),
                             rtol=1e-5)


# ----------------------------------------------------------------------------
# Config keys: the crop's implementation, the tf.data pool.
# ----------------------------------------------------------------------------
def test_the_seeds_keep_their_crops_and_user_configs_get_the_fast_one():
  crops = {name: configlib.load(f"configs/{name}.py").augment.crop_impl
           for name in ("cifar10_convvit", "cifar10_vit", "aircraft_slresnet50",
                        "food101_hybrid", "cifar100_hybrid", "quickstart")}
  assert crops == {"cifar10_convvit": "pillow_exact",
                   "cifar10_vit": "pillow_exact",
                   "aircraft_slresnet50": "pillow_exact",
                   "food101_hybrid": "tf_fast", "cifar100_hybrid": "tf_fast",
                   "quickstart": "tf_fast"}
  assert configlib.base_config().augment.crop_impl == "tf_fast"
  # A config saved before the key existed keeps the crop it trained with.
  old = ml_collections.ConfigDict({"augment": {"random_resized_crop": True}})
  assert pipeline.crop_impl(old) == "pillow_exact"


def test_bad_crop_impl_and_thread_count_name_the_key_and_choices():
  c = _config()
  c.augment.crop_impl = "pil"
  with pytest.raises(ConfigError, match=r"augment\.crop_impl='pil'.*"
                     r"tf_fast.*pillow_exact"):
    pipeline.crop_impl(c)
  c = _config(input_threads=-1)
  with pytest.raises(ConfigError, match="input_threads=-1"):
    pipeline.input_threads(c)


def test_tf_data_pool_is_this_processs_cores_or_the_config():
  assert pipeline.input_threads(_config()) == len(os.sched_getaffinity(0))
  assert pipeline.input_threads(_config(input_threads=3)) == 3
  src = sources.get_source("offline:digits")
  ds = pipeline.create_train_dataset(
      src, _config(input_threads=3), shard=pipeline.ProcessShard(0, 1, 8),
      steps_per_epoch=2, num_epochs=1)
  assert ds.options().threading.private_threadpool_size == 3
