"""tf.data input pipelines: deterministic, resumable training and exact eval.

Training order and augmentation are pure functions of ``(config.seed, step)``:

* every epoch shuffles this process's share of the split with its own seed
  (``seed``, ``epoch``) and contributes exactly ``steps_per_epoch`` batches;
* every batch's augmentation parameters are drawn, for all its rows at
  once, from a stateless seed made of the data seed and the batch's step
  (with several processes in global order, the global batch's step: each
  process keeps its rows of the draws); the pixels are then augmented a
  whole batch at a time.

So a run resumed at step ``s`` rebuilds the stream at epoch
``s // steps_per_epoch`` and skips ``s % steps_per_epoch`` batches, and sees
the very same augmented images an uninterrupted run would have seen, however
many parallel calls tf.data uses.

Evaluation reads every example exactly once: the last batch is padded with
``mask == 0`` examples, and all processes run the same number of batches.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator

import ml_collections
import numpy as np
from absl import logging

from jaxattn.configlib import ConfigError
from jaxattn.data import DatasetError, ProcessShard, augment, image_files
from jaxattn.data.sources import DataSource
from jaxattn.data.tf_import import tf

# Arbitrary large prime: keeps per-epoch shuffle seeds of different data
# seeds apart.
_EPOCH_SEED_STRIDE = 1_000_003
# The (source, split) that each dataset made here reads, for as_numpy to
# name the files behind a decoding error: tf.data's own error names none.
_READS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MAX_FILES_NAMED = 10


def _reads(ds: tf.data.Dataset, source: DataSource, split: str
           ) -> tf.data.Dataset:
  """``ds``, remembered as reading ``split`` of ``source`` (see _READS)."""
  _READS[ds] = (source, split)
  return ds


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
  if image.dtype == tf.uint8:
    return image
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _resize(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
  """Bilinear, antialiased resize to ``size`` (a no-op at that size)."""
  image = tf.ensure_shape(image, [None, None, image.shape[-1]])
  shape = tf.shape(image)[:2]
  # `size` may be ints or (the eval crop's) int32 scalars.
  same = tf.reduce_all(tf.equal(shape, tf.convert_to_tensor(size, tf.int32)))
  return tf.cond(
      same, lambda: tf.cast(image, tf.float32),
      lambda: tf.image.resize(tf.cast(image, tf.float32), size,
                              method="bilinear", antialias=True))


def _normalize(image01: tf.Tensor, config: ml_collections.ConfigDict):
  """[0, 1] floats -> (x - mean) / std, in the config's units of [0, 1]."""
  mean = tf.constant(config.pixel_mean, tf.float32)
  std = tf.constant(config.pixel_std, tf.float32)
  return (image01 - mean) / std


def _resize_and_centre_crop(image: tf.Tensor, size: tuple[int, int],
                            fraction: float) -> tf.Tensor:
  """Aspect-preserving resize to cover ``size / fraction``, centre crop ``size``.

  For a square ``size`` S this is the ImageNet evaluation convention of
  torchvision's ``Resize(floor(S / fraction))`` + ``CenterCrop(S)``: the
  shorter side becomes ``floor(S / fraction)``, the other
  ``floor(new_short * long / short)``, and the crop starts at
  ``round((resized - S) / 2)`` (half to even, as Python's ``round``). In
  general the side with the largest ``size / side`` plays the shorter side's
  part. The resize is `_resize`'s (float32, bilinear, antialiased).
  """
  image = tf.ensure_shape(image, [None, None, image.shape[-1]])
  hw = tf.cast(tf.shape(image)[:2], tf.float64)
  target = tf.constant(size, tf.float64)
  binding = tf.argmax(target / hw)  # The side that decides the scale.
  new_binding = tf.floor(tf.gather(target, binding) / fraction)
  resized = tf.where(tf.equal(tf.range(2, dtype=binding.dtype), binding),
                     new_binding,
                     tf.floor(hw * new_binding / tf.gather(hw, binding)))
  crop = tf.constant(size, tf.int32)
  # Never below the crop (floating-point rounding at fraction 1).
  resized = tf.maximum(tf.cast(resized, tf.int32), crop)
  margin = tf.cast(resized - crop, tf.float64)
  top, left = tf.unstack(tf.cast(tf.round(margin / 2), tf.int32))
  image = _resize(image, tuple(tf.unstack(resized)))
  return image[top:top + size[0], left:left + size[1]]


def preprocess_for_eval(image: tf.Tensor,
                        config: ml_collections.ConfigDict) -> tf.Tensor:
  """uint8 HxWxC -> float32 at config.image_size, normalised.

  ``config.eval_crop_fraction`` 0 resizes straight to ``image_size``; a
  fraction f in (0, 1] resizes keeping the aspect ratio to cover
  ``image_size / f`` and centre-crops ``image_size``
  (`_resize_and_centre_crop`).
  """
  size = tuple(config.image_size)
  fraction = image_files.eval_crop_fraction(config)
  if fraction == 0:
    image = _resize(image, size)
  else:
    image = _resize_and_centre_crop(image, size, fraction)
  image = image / 255.0
  return tf.ensure_shape(_normalize(image, config),
                         [*size, image.shape[-1]])


def _static_hw(image: tf.Tensor) -> tuple[int, int] | None:
  height, width = image.shape[0], image.shape[1]
  return None if height is None or width is None else (height, width)


def _resize_unless_cropped(image: tf.Tensor,
                     config: ml_collections.ConfigDict) -> tf.Tensor:
  """One example resized to ``config.image_size``, unless a crop will.

  Without RandomResizedCrop an image of another size is resized (float32
  in 0..255, exactly as in evaluation); that needs no random draw, so it can
  run before the batch exists.
  """
  size = tuple(config.image_size)
  if not config.augment.random_resized_crop and _static_hw(image) != size:
    image = _resize(image, size)
  return image


def _jitter_args(aug: ml_collections.ConfigDict) -> dict[str, float]:
  brightness, contrast, saturation = aug.color_jitter
  return dict(brightness=brightness, contrast=contrast, saturation=saturation)


def sample_train_augmentation(seed: tf.Tensor, num: int | tf.Tensor, height,
                              width, config: ml_collections.ConfigDict
                              ) -> dict[str, tf.Tensor]:
  """The random parameters of ``num`` images' augmentations, from one seed.

  ``height``/``width`` are the images' sizes before cropping (scalars or
  [num]). Each value has leading dimension ``num``; only enabled stages
  have an entry. A row's parameters depend on the seed and the row alone.
  """
  aug = config.augment
  size = tuple(config.image_size)
  crop_seed, flip_seed, ra_seed, jitter_seed, erase_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=5))
  params = {}
  if aug.random_resized_crop:
    params["crop"] = augment.sample_crop(
        crop_seed, num, height, width, scale=tuple(aug.crop_scale),
        ratio=tuple(aug.crop_ratio))
  if aug.flip:
    params["flip"] = augment.sample_flip(flip_seed, num)
  if aug.rand_augment_ops:
    params["ra_ops"], params["ra_negate"] = augment.sample_rand_augment(
        ra_seed, num, aug.rand_augment_ops)
  if any(aug.color_jitter):
    params["jitter_order"], params["jitter_factors"] = (
        augment.sample_color_jitter(jitter_seed, num, **_jitter_args(aug)))
  if aug.random_erasing:
    params["erase"] = augment.sample_erasing(erase_seed, num, *size,
                                             p=aug.random_erasing)
  return params


# Above this many canvas pixels per output pixel, a padded batch is cropped
# image by image: the batched crop reads the whole canvas, a single crop only
# its box.
_MAX_CANVAS_PER_OUTPUT_PIXEL = 4


def _crop_batch(images: tf.Tensor, boxes: tf.Tensor, image_sizes,
                size: tuple[int, int]) -> tf.Tensor:
  """RandomResizedCrop's pixels for a batch, possibly padded to its largest image.

  Small canvases are cropped as one batch; large ones (a source of large
  images of mixed sizes) image by image. Both give the same bits.
  """
  if image_sizes is None:
    return augment.resized_crop_batch(images, boxes, size)
  shape = tf.shape(images)
  canvas = tf.cast(shape[1] * shape[2], tf.float64)

  def one_by_one():
    return tf.map_fn(
        lambda args: augment.resized_crop(*args, size), (images, boxes),
        fn_output_signature=tf.TensorSpec([*size, images.shape[-1]],
                                          images.dtype))

  return tf.cond(
      canvas <= _MAX_CANVAS_PER_OUTPUT_PIXEL * size[0] * size[1],
      lambda: augment.resized_crop_batch(images, boxes, size), one_by_one)


def augment_train_batch(images: tf.Tensor, params: dict[str, tf.Tensor],
                        config: ml_collections.ConfigDict, *,
                        image_sizes: tf.Tensor | None = None) -> tf.Tensor:
  """The train-time augmentations of a batch, in torchvision's usual order.

  RandomResizedCrop -> flip -> RandAugment -> ColorJitter (these on uint8
  images with PIL's semantics, as torchvision applies them to PIL images) ->
  [0, 1] floats -> normalisation -> RandomErasing (on the normalised tensor,
  as in torchvision pipelines), each with the per-image parameters of
  `sample_train_augmentation`. ``images`` is [B, H, W, C]; a batch of images
  of mixed sizes, padded to the largest, is cropped with its int32 [B, 2]
  ``image_sizes`` given (only a crop can make such a batch uniform). Each
  stage is off unless
  its config key asks for it; with none on (and config.eval_crop_fraction 0),
  this is exactly `preprocess_for_eval` (which the backbone feature cache
  relies on).
  """
  aug = config.augment
  size = tuple(config.image_size)
  if "crop" in params:  # uint8 in, uint8 out (Pillow's resampling).
    images = _crop_batch(images, params["crop"], image_sizes, size)
  if "flip" in params:
    images = augment.flip_batch(images, params["flip"])
  if "ra_ops" in params or "jitter_order" in params:
    images = _to_uint8(images)  # These ops follow PIL on uint8 images.
    if "ra_ops" in params:
      images = augment.rand_augment_batch(
          images, params["ra_ops"], params["ra_negate"],
          magnitude=aug.rand_augment_magnitude)
    if "jitter_order" in params:
      images = augment.color_jitter_batch(
          images, params["jitter_order"], params["jitter_factors"],
          **_jitter_args(aug))
  images = _normalize(tf.cast(images, tf.float32) / 255.0, config)
  if "erase" in params:
    images = augment.erasing_batch(images, params["erase"])
  return tf.ensure_shape(images, [None, *size, images.shape[-1]])


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  options.threading.private_threadpool_size = 0  # Use TF's shared pool.
  return options


def _holds_features(input_kind: str) -> bool:
  if input_kind not in ("images", "features"):
    raise ValueError(f"input_kind={input_kind!r} must be 'images' or "
                     "'features'.")
  return input_kind == "features"


def create_train_dataset(source: DataSource, config: ml_collections.ConfigDict,
                         *, shard: ProcessShard, steps_per_epoch: int,
                         num_epochs: int, start_step: int = 0,
                         input_kind: str = "images") -> tf.data.Dataset:
  """Batches of {"image", "label"} from ``start_step`` to the end of training.

  ``input_kind="features"``: the source holds precomputed vectors (seed
  000's cached backbone logits), batched as they are, without preprocessing.

  With several processes and ``config.input_order == "global"`` every process
  walks the same shuffled stream of the whole split (still encoded) and keeps
  only its rows of each global batch, so the global batches, and the
  augmentation of each example, are those of a single-process run.
  """
  local_batch = shard.local_batch_size
  global_batch = local_batch * shard.process_count
  holds_features = _holds_features(input_kind)
  global_order = (shard.process_count > 1 and not holds_features and
                  config.get("input_order", "global") == "global")
  if config.get("input_order", "global") not in ("global", "per_process"):
    raise ConfigError(f"config.input_order={config.input_order!r} must be "
                      "'global' or 'per_process'.")
  if global_order:
    # Decoding is deferred to the rows this process keeps, unless the
    # decoded split is cached in memory anyway.
    base = source.read(config.train_split, decode=bool(config.cache))
    rows_per_epoch = steps_per_epoch * global_batch
  else:
    base = source.read(config.train_split, process_index=shard.process_index,
                       process_count=shard.process_count)
    rows_per_epoch = steps_per_epoch * local_batch
  # Images of mixed sizes until they are cropped are padded to the largest
  # of their batch and keep their true sizes (the crop never reads padding).
  # The sizes are taken once, before the cache, where the images are decoded.
  decode_later = global_order and not config.cache
  decoded = base.map(source.decode) if decode_later else base  # (For specs.)
  mixed_sizes = (not holds_features and config.augment.random_resized_crop
                 and _static_hw(decoded.element_spec["image"]) is None)
  with_sizes = lambda example: {**example,
                                "image_size": tf.shape(example["image"])[:2]}
  if mixed_sizes and not decode_later:
    base = base.map(with_sizes, num_parallel_calls=tf.data.AUTOTUNE)
  if config.cache:
    base = base.cache()
  buffer = max(1, min(config.shuffle_buffer,
                      source.num_examples(config.train_split)))
  data_seed = int(config.seed)

  def one_epoch(epoch):
    shuffle_seed = data_seed * _EPOCH_SEED_STRIDE + epoch
    return base.shuffle(buffer, seed=shuffle_seed,
                        reshuffle_each_iteration=False).take(rows_per_epoch)

  start_epoch, offset = divmod(start_step, steps_per_epoch)
  ds = tf.data.Dataset.range(start_epoch, num_epochs).flat_map(one_epoch)
  if global_order:
    ds = ds.skip(offset * global_batch).enumerate()
    ds = ds.filter(lambda position, _: (position % global_batch) // local_batch
                   == shard.process_index)
    ds = ds.map(lambda _, example: example)
    if not config.cache:
      decode = source.decode
      if mixed_sizes:
        decode = lambda example: with_sizes(source.decode(example))
      ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
  else:
    ds = ds.skip(offset * local_batch)
  if holds_features:  # Cached backbone outputs: nothing to preprocess.
    ds = ds.batch(local_batch, drop_remainder=True)
    return _reads(ds.prefetch(tf.data.AUTOTUNE).with_options(_options()),
                  source, config.train_split)

  size = tuple(config.image_size)
  if mixed_sizes:
    ds = ds.padded_batch(local_batch, drop_remainder=True)
  else:
    if (not config.augment.random_resized_crop and
        _static_hw(ds.element_spec["image"]) != size):
      ds = ds.map(lambda example: {**example, "image": _resize_unless_cropped(
          example["image"], config)}, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(local_batch, drop_remainder=True)

  # One seed per batch draws the parameters of all its rows at once, and
  # every pixel stage runs on the whole batch: per example, a tf.data map
  # spends more on dispatching its dozens of small ops than on the pixels.
  # The seed is the data seed and the batch's step, counted from the start
  # of training, so a resumed run draws what an uninterrupted one did. With
  # several processes in global order it is the global batch's, and each
  # process keeps its rows of the draws: every example gets the augmentation
  # of a single-process run.
  if global_order:
    draws_per_batch = global_batch
    first_row = shard.process_index * local_batch
    batch_id = lambda step: step
  else:
    draws_per_batch, first_row = local_batch, 0
    batch_id = lambda step: step * shard.process_count + shard.process_index

  def augment_batch(step, batch):
    images = batch["image"]
    image_sizes = batch.get("image_size")
    heights = tf.ones([draws_per_batch], tf.int32)
    widths = tf.ones([draws_per_batch], tf.int32)
    # Only this process's rows' sizes are known (1 x 1 stands in for the
    # others); a row's draws do not depend on the other rows.
    rows = tf.range(first_row, first_row + local_batch)[:, None]
    if image_sizes is None:  # One size for the whole batch.
      own_heights = tf.fill([local_batch], tf.shape(images)[1])
      own_widths = tf.fill([local_batch], tf.shape(images)[2])
    else:
      own_heights, own_widths = tf.unstack(image_sizes, 2, axis=1)
    heights = tf.tensor_scatter_nd_update(heights, rows, own_heights)
    widths = tf.tensor_scatter_nd_update(widths, rows, own_widths)
    seed = tf.stack([tf.constant(data_seed, tf.int64), batch_id(step)])
    params = sample_train_augmentation(seed, draws_per_batch, heights, widths,
                                       config)
    params = {key: value[first_row:first_row + local_batch]
              for key, value in params.items()}
    return {"image": augment_train_batch(images, params, config,
                                         image_sizes=image_sizes),
            "label": batch["label"]}

  ds = ds.enumerate(start=start_step)  # Batch b of the stream is step b.
  ds = ds.map(augment_batch, num_parallel_calls=tf.data.AUTOTUNE)
  return _reads(ds.prefetch(tf.data.AUTOTUNE).with_options(_options()),
                source, config.train_split)


def num_eval_batches(num_examples: int, shard: ProcessShard) -> int:
  """Batches every process runs so that the largest share fits."""
  largest_share = math.ceil(num_examples / shard.process_count)
  return max(1, math.ceil(largest_share / shard.local_batch_size))


def create_eval_dataset(source: DataSource, split: str,
                        config: ml_collections.ConfigDict, *,
                        shard: ProcessShard, input_kind: str = "images"
                        ) -> tuple[tf.data.Dataset, int]:
  """(dataset, num_batches) with every example once; padding has mask 0.

  ``input_kind="features"``: precomputed vectors, not preprocessed.
  """
  ds = source.read(split, process_index=shard.process_index,
                   process_count=shard.process_count)
  local_count = int(ds.cardinality())
  if local_count < 0:  # Unknown cardinality: count once (small splits only).
    local_count = int(ds.reduce(0, lambda n, _: n + 1))
  num_batches = num_eval_batches(source.num_examples(split), shard)
  holds_features = _holds_features(input_kind)
  ds = ds.map(lambda ex: {"image": ex["image"] if holds_features else
                          preprocess_for_eval(ex["image"], config),
                          "label": ex["label"],
                          "mask": tf.constant(1.0, tf.float32)},
              num_parallel_calls=tf.data.AUTOTUNE)
  if config.cache:
    ds = ds.cache()
  pad_count = num_batches * shard.local_batch_size - local_count
  padding = tf.data.Dataset.from_tensors(
      {"image": tf.zeros(ds.element_spec["image"].shape, tf.float32),
       "label": tf.constant(0, tf.int64),
       "mask": tf.constant(0.0, tf.float32)}).repeat(pad_count)
  ds = ds.concatenate(padding).batch(shard.local_batch_size)
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_options())
  return _reads(ds, source, split), num_batches


def as_numpy(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  """Iterates a dataset as numpy dicts (the host side of the input).

  When a file of a dataset made here cannot be decoded, the error names it
  and the fix (``DataSource.undecodable``) instead of TensorFlow's message,
  which names no file.
  """
  read = _READS.get(ds)
  if read is None:
    return ds.as_numpy_iterator()
  return _naming_undecodable(ds.as_numpy_iterator(), *read)


def _naming_undecodable(batches, source: DataSource, split: str):
  try:
    yield from batches
  except tf.errors.InvalidArgumentError:
    # The failing batch's files are not known here (shuffled, cached): find
    # the bad ones among all of the split's, only now that one has failed.
    logging.error("Reading %s (split %r) failed; looking for the files that "
                  "cannot be decoded.", source.name, split)
    problems = source.undecodable(split)
    if not problems:
      raise
    named = problems[:_MAX_FILES_NAMED]
    if len(problems) > len(named):
      named.append(f"... and {len(problems) - len(named)} more.")
    raise DatasetError(
        f"{len(problems)} image file(s) of {source.name} (split {split!r}) "
        "cannot be decoded:\n  " + "\n  ".join(named)) from None
