"""tf.data input pipelines: deterministic, resumable training and exact eval.

Training order and augmentation are pure functions of ``(config.seed, step)``:

* every epoch shuffles this process's share of the split with its own seed
  (``seed``, ``epoch``) and contributes exactly ``steps_per_epoch`` batches;
* every example's augmentation draws from a stateless seed made of the data
  seed and the example's position in the stream.

So a run resumed at step ``s`` rebuilds the stream at epoch
``s // steps_per_epoch`` and skips ``s % steps_per_epoch`` batches, and sees
the very same augmented images an uninterrupted run would have seen, however
many parallel calls tf.data uses.

Evaluation reads every example exactly once: the last batch is padded with
``mask == 0`` examples, and all processes run the same number of batches.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import ml_collections
import numpy as np
import tensorflow as tf

from jaxattn.data import augment
from jaxattn.data.sources import DataSource

# Arbitrary large prime: keeps per-epoch shuffle seeds of different data
# seeds apart.
_EPOCH_SEED_STRIDE = 1_000_003


@dataclasses.dataclass(frozen=True)
class ProcessShard:
  """Which share of the data this process reads, and its batch size."""

  process_index: int
  process_count: int
  local_batch_size: int


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
  if image.dtype == tf.uint8:
    return image
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _resize(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
  """Bilinear, antialiased resize to ``size`` (a no-op at that size)."""
  image = tf.ensure_shape(image, [None, None, image.shape[-1]])
  shape = tf.shape(image)[:2]
  same = tf.reduce_all(tf.equal(shape, tf.constant(size, tf.int32)))
  return tf.cond(
      same, lambda: tf.cast(image, tf.float32),
      lambda: tf.image.resize(tf.cast(image, tf.float32), size,
                              method="bilinear", antialias=True))


def _normalize(image01: tf.Tensor, config: ml_collections.ConfigDict):
  """[0, 1] floats -> (x - mean) / std, in the config's units of [0, 1]."""
  mean = tf.constant(config.pixel_mean, tf.float32)
  std = tf.constant(config.pixel_std, tf.float32)
  return (image01 - mean) / std


def preprocess_for_eval(image: tf.Tensor,
                        config: ml_collections.ConfigDict) -> tf.Tensor:
  """uint8 HxWxC -> float32 at config.image_size, normalised."""
  size = tuple(config.image_size)
  image = _resize(image, size) / 255.0
  return tf.ensure_shape(_normalize(image, config),
                         [*size, image.shape[-1]])


def preprocess_for_train(image: tf.Tensor, seed: tf.Tensor,
                         config: ml_collections.ConfigDict) -> tf.Tensor:
  """The train-time augmentations, in torchvision's usual order.

  RandomResizedCrop -> flip -> RandAugment -> ColorJitter (these on uint8
  images with PIL's semantics, as torchvision applies them to PIL images) ->
  [0, 1] floats -> normalisation -> RandomErasing (on the normalised tensor,
  as in torchvision pipelines). Each stage is off unless its config key asks
  for it; with none on, this is exactly `preprocess_for_eval` (which the
  backbone feature cache relies on).
  """
  aug = config.augment
  size = tuple(config.image_size)
  crop_seed, flip_seed, ra_seed, jitter_seed, erase_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=5))
  if aug.random_resized_crop:  # uint8 in, uint8 out (Pillow's resampling).
    image = augment.random_resized_crop(
        image, crop_seed, size=size, scale=tuple(aug.crop_scale),
        ratio=tuple(aug.crop_ratio))
  else:  # float32 in 0..255, exactly as in evaluation.
    image = _resize(image, size)
  if aug.flip:
    image = augment.random_horizontal_flip(image, flip_seed)
  brightness, contrast, saturation = aug.color_jitter
  if aug.rand_augment_ops or brightness or contrast or saturation:
    image = _to_uint8(image)  # These ops follow PIL on uint8 images.
    if aug.rand_augment_ops:
      image = augment.rand_augment(image, ra_seed,
                                   num_ops=aug.rand_augment_ops,
                                   magnitude=aug.rand_augment_magnitude)
    if brightness or contrast or saturation:
      image = augment.color_jitter(image, jitter_seed, brightness=brightness,
                                   contrast=contrast, saturation=saturation)
  image = _normalize(tf.cast(image, tf.float32) / 255.0, config)
  if aug.random_erasing:
    image = augment.random_erasing(image, erase_seed, p=aug.random_erasing)
  return tf.ensure_shape(image, [*size, image.shape[-1]])


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  options.threading.private_threadpool_size = 0  # Use TF's shared pool.
  return options


def create_train_dataset(source: DataSource, config: ml_collections.ConfigDict,
                         *, shard: ProcessShard, steps_per_epoch: int,
                         num_epochs: int, start_step: int = 0) -> tf.data.Dataset:
  """Batches of {"image", "label"} from ``start_step`` to the end of training.

  With several processes and ``config.input_order == "global"`` every process
  walks the same shuffled stream of the whole split (still encoded) and keeps
  only its rows of each global batch, so the global batches, and the
  augmentation of each example, are those of a single-process run.
  """
  local_batch = shard.local_batch_size
  global_batch = local_batch * shard.process_count
  holds_features = getattr(source, "holds_features", False)
  global_order = (shard.process_count > 1 and not holds_features and
                  config.get("input_order", "global") == "global")
  if config.get("input_order", "global") not in ("global", "per_process"):
    raise ValueError(f"config.input_order={config.input_order!r} must be "
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
  # Positions count from the start of training, so an example's augmentation
  # seed does not depend on where the run was resumed.
  ds = ds.enumerate(start=start_epoch * rows_per_epoch)
  if global_order:
    ds = ds.skip(offset * global_batch)
    ds = ds.filter(lambda position, _: (position % global_batch) // local_batch
                   == shard.process_index)
    if not config.cache:
      ds = ds.map(lambda position, example: (position, source.decode(example)),
                  num_parallel_calls=tf.data.AUTOTUNE)
  else:
    ds = ds.skip(offset * local_batch)

  def preprocess(position, example):
    if holds_features:  # Cached backbone outputs: nothing to preprocess.
      return example
    if global_order:
      unique = position
    else:
      unique = position * shard.process_count + shard.process_index
    seed = tf.stack([tf.constant(data_seed, tf.int64), unique])
    return {"image": preprocess_for_train(example["image"], seed, config),
            "label": example["label"]}

  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def num_eval_batches(num_examples: int, shard: ProcessShard) -> int:
  """Batches every process runs so that the largest share fits."""
  largest_share = math.ceil(num_examples / shard.process_count)
  return max(1, math.ceil(largest_share / shard.local_batch_size))


def create_eval_dataset(source: DataSource, split: str,
                        config: ml_collections.ConfigDict, *,
                        shard: ProcessShard) -> tuple[tf.data.Dataset, int]:
  """(dataset, num_batches) with every example once; padding has mask 0."""
  ds = source.read(split, process_index=shard.process_index,
                   process_count=shard.process_count)
  local_count = int(ds.cardinality())
  if local_count < 0:  # Unknown cardinality: count once (small splits only).
    local_count = int(ds.reduce(0, lambda n, _: n + 1))
  num_batches = num_eval_batches(source.num_examples(split), shard)
  holds_features = getattr(source, "holds_features", False)
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
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options()), num_batches


def as_numpy(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  """Iterates a dataset as numpy dicts (the host side of the input)."""
  return ds.as_numpy_iterator()
