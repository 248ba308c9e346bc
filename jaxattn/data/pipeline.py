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

What the pipelines deliver: with ``standardize=False`` (what training,
evaluation and bench ask for, through ``Experiment``) images stay uint8 at
``config.image_size``, a quarter of float32's bytes, and the steps
standardise them and apply RandomErasing on the device
(``jaxattn/data/on_device.py``; the erasing boxes, drawn here, travel as the
batch's ``"erase"``). ``standardize=True`` (the default of these functions,
for callers that feed a model directly, e.g. explain) delivers the float32
model inputs, computed here as before.

The random crop has two implementations (``config.augment.crop_impl``):
"tf_fast", TF's Inception crop per image, decoding only the crop's window of
a JPEG (``jaxattn/data/inception_crop.py``), and "pillow_exact",
torchvision's RandomResizedCrop with Pillow's resampling on whole batches
(``augment.resized_crop_batch``), bit-exact with the seeds that trained
with torchvision.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator

import ml_collections
import numpy as np
from absl import logging

from jaxattn import configlib, cpu_defaults
from jaxattn.configlib import ConfigError
from jaxattn.data import (DatasetError, ProcessShard, augment, image_files,
                          inception_crop)
from jaxattn.data.sources import DataSource
from jaxattn.data.tf_import import tf

# Arbitrary large prime: keeps per-epoch shuffle seeds of different data
# seeds apart.
_EPOCH_SEED_STRIDE = 1_000_003
# The (source, split) that each dataset made here reads, for as_numpy to
# name the files behind a decoding error: tf.data's own error names none.
_READS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MAX_FILES_NAMED = 10
# Folded into a batch's seed for the per-image draws of the "tf_fast" crop,
# apart from the batch-wide draws of `sample_train_augmentation`.
_CROP_STREAM = 0x63726F70

CROP_IMPLS = configlib.CROP_IMPLS
crop_impl = configlib.crop_impl


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
                        config: ml_collections.ConfigDict, *,
                        standardize: bool = True) -> tf.Tensor:
  """uint8 HxWxC -> float32 at config.image_size, normalised.

  ``config.eval_crop_fraction`` 0 resizes straight to ``image_size``; a
  fraction f in (0, 1] resizes keeping the aspect ratio to cover
  ``image_size / f`` and centre-crops ``image_size``
  (`_resize_and_centre_crop`). ``standardize=False`` stops before the
  normalisation and returns the resized pixels rounded to uint8 (the steps
  normalise them on the device; an image already at ``image_size`` is
  returned unchanged).
  """
  size = tuple(config.image_size)
  fraction = image_files.eval_crop_fraction(config)
  if fraction == 0:
    image = _resize(image, size)
  else:
    image = _resize_and_centre_crop(image, size, fraction)
  if not standardize:
    return tf.ensure_shape(_to_uint8(image), [*size, image.shape[-1]])
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
  have an entry (the "tf_fast" crop has none: it is drawn per image). A
  row's parameters depend on the seed and the row alone.
  """
  aug = config.augment
  size = tuple(config.image_size)
  crop_seed, flip_seed, ra_seed, jitter_seed, erase_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=5))
  params = {}
  # The "tf_fast" crop draws per image, before the batch exists.
  if aug.random_resized_crop and crop_impl(config) == "pillow_exact":
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
                        image_sizes: tf.Tensor | None = None,
                        standardize: bool = True) -> tf.Tensor:
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

  ``standardize=False`` stops before the normalisation: uint8 images, which
  ``on_device.prepare_images`` normalises and erases with ``params["erase"]``
  (the same values as this function's float path).
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
  if not standardize:
    return tf.ensure_shape(_to_uint8(images),
                           [None, *size, images.shape[-1]])
  images = _normalize(tf.cast(images, tf.float32) / 255.0, config)
  if "erase" in params:
    images = augment.erasing_batch(images, params["erase"])
  return tf.ensure_shape(images, [None, *size, images.shape[-1]])


def input_threads(config: ml_collections.ConfigDict) -> int:
  """Threads of this process's tf.data pool: ``config.input_threads``, or
  (0) the cores this process may run on (``os.sched_getaffinity``: its share
  under ``taskset``, SLURM's ``--cpu-bind`` or a container's cpuset), not
  the whole machine's."""
  return configlib.input_threads(config) or cpu_defaults.usable_cores()


def _options(config: ml_collections.ConfigDict) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  # A pool of its own, sized to this process's cores: TF's shared pool is
  # sized to the whole machine in every process (8 processes of a GPU node
  # would each start a thread per core of the node).
  options.threading.private_threadpool_size = input_threads(config)
  return options


def _holds_features(input_kind: str) -> bool:
  if input_kind not in ("images", "features"):
    raise ValueError(f"input_kind={input_kind!r} must be 'images' or "
                     "'features'.")
  return input_kind == "features"


def create_train_dataset(source: DataSource, config: ml_collections.ConfigDict,
                         *, shard: ProcessShard, steps_per_epoch: int,
                         num_epochs: int, start_step: int = 0,
                         input_kind: str = "images",
                         standardize: bool = True) -> tf.data.Dataset:
  """Batches of {"image", "label"} from ``start_step`` to the end of training.

  ``input_kind="features"``: the source holds precomputed vectors (seed
  000's cached backbone logits), batched as they are, without preprocessing.

  ``standardize=False``: uint8 images, and RandomErasing's boxes as
  ``"erase"`` when it is on (see the module doc).

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
  fast_crop = (not holds_features and crop_impl(config) == "tf_fast"
               and config.augment.random_resized_crop)
  # The stream stays encoded (file bytes, paths) until this process's rows
  # are known, or, for the "tf_fast" crop, until each image is cropped: it
  # decodes only its window. A decoded split cached in memory is decoded
  # once, up front.
  encoded = not config.cache and (global_order or fast_crop)
  if global_order:
    base = source.read(config.train_split, decode=not encoded)
    rows_per_epoch = steps_per_epoch * global_batch
  else:
    base = source.read(config.train_split, process_index=shard.process_index,
                       process_count=shard.process_count, decode=not encoded)
    rows_per_epoch = steps_per_epoch * local_batch
  # Images of mixed sizes until they are cropped in batches are padded to
  # the largest of their batch and keep their true sizes (the crop never
  # reads padding). The sizes are taken once, before the cache, where the
  # images are decoded.
  decoded = base.map(source.decode) if encoded else base  # (For specs.)
  mixed_sizes = (not holds_features and config.augment.random_resized_crop
                 and not fast_crop
                 and _static_hw(decoded.element_spec["image"]) is None)
  with_sizes = lambda example: {**example,
                                "image_size": tf.shape(example["image"])[:2]}
  if mixed_sizes and not encoded:
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

  # Every batch's random draws come from one seed: the data seed and the
  # batch's step, counted from the start of training, so a resumed run draws
  # what an uninterrupted one did. With several processes in global order it
  # is the global batch's, and each process keeps its rows of the draws:
  # every example gets the augmentation of a single-process run.
  if global_order:
    draws_per_batch = global_batch
    first_row = shard.process_index * local_batch
    batch_id = lambda step: step
  else:
    draws_per_batch, first_row = local_batch, 0
    batch_id = lambda step: step * shard.process_count + shard.process_index

  def batch_seed(step):
    return tf.stack([tf.constant(data_seed, tf.int64), batch_id(step)])

  start_epoch, offset = divmod(start_step, steps_per_epoch)
  ds = tf.data.Dataset.range(start_epoch, num_epochs).flat_map(one_epoch)
  # Position 0 of the stream after the skip is row 0 of step start_step.
  if global_order:
    ds = ds.skip(offset * global_batch).enumerate()
    ds = ds.filter(lambda position, _: (position % global_batch) // local_batch
                   == shard.process_index)
    rows_of_stream = global_batch
  else:
    ds = ds.skip(offset * local_batch)
    if fast_crop:
      ds = ds.enumerate()
    rows_of_stream = local_batch
  if holds_features:  # Cached backbone outputs: nothing to preprocess.
    ds = ds.batch(local_batch, drop_remainder=True)
    return _reads(ds.prefetch(tf.data.AUTOTUNE).with_options(_options(config)),
                  source, config.train_split)

  size = tuple(config.image_size)
  aug = config.augment
  # Read here, not inside a traced map: a source may look at a file for it.
  channels = source.image_shape[2] if fast_crop and encoded else None

  def crop_one(position, example):
    """The "tf_fast" crop of one example, from the seed of its row."""
    step = start_step + position // rows_of_stream
    seed = tf.random.experimental.stateless_fold_in(
        tf.random.experimental.stateless_fold_in(batch_seed(step),
                                                 _CROP_STREAM),
        position % rows_of_stream)
    crop_args = dict(scale=tuple(aug.crop_scale), ratio=tuple(aug.crop_ratio))
    data = source.encoded_image(example) if encoded else None
    if data is not None:
      image = inception_crop.crop_encoded(
          data, seed, size, channels=channels, **crop_args)
    else:
      pixels = (source.decode(example) if encoded else example)["image"]
      image = inception_crop.crop_decoded(pixels, seed, size, **crop_args)
    return {"image": image, "label": example["label"]}

  if fast_crop:
    ds = ds.map(crop_one, num_parallel_calls=tf.data.AUTOTUNE)
  else:
    if global_order:
      ds = ds.map(lambda _, example: example)
    if encoded:
      decode = source.decode
      if mixed_sizes:
        decode = lambda example: with_sizes(source.decode(example))
      ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
  if mixed_sizes:
    ds = ds.padded_batch(local_batch, drop_remainder=True)
  else:
    if (not aug.random_resized_crop and
        _static_hw(ds.element_spec["image"]) != size):
      def resize(example):
        image = _resize_unless_cropped(example["image"], config)
        return {**example,
                "image": image if standardize else _to_uint8(image)}
      ds = ds.map(resize, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(local_batch, drop_remainder=True)

  # Every pixel stage after the crop runs on the whole batch, with the
  # parameters of all its rows drawn at once: per example, a tf.data map
  # spends more on dispatching its dozens of small ops than on the pixels.
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
    params = sample_train_augmentation(batch_seed(step), draws_per_batch,
                                       heights, widths, config)
    params = {key: value[first_row:first_row + local_batch]
              for key, value in params.items()}
    out = {"image": augment_train_batch(images, params, config,
                                        image_sizes=image_sizes,
                                        standardize=standardize),
           "label": batch["label"]}
    if not standardize and "erase" in params:
      out["erase"] = params["erase"]
    return out

  ds = ds.enumerate(start=start_step)  # Batch b of the stream is step b.
  ds = ds.map(augment_batch, num_parallel_calls=tf.data.AUTOTUNE)
  return _reads(ds.prefetch(tf.data.AUTOTUNE).with_options(_options(config)),
                source, config.train_split)


def num_eval_batches(num_examples: int, shard: ProcessShard) -> int:
  """Batches every process runs so that the largest share fits."""
  largest_share = math.ceil(num_examples / shard.process_count)
  return max(1, math.ceil(largest_share / shard.local_batch_size))


def create_eval_dataset(source: DataSource, split: str,
                        config: ml_collections.ConfigDict, *,
                        shard: ProcessShard, input_kind: str = "images",
                        standardize: bool = True
                        ) -> tuple[tf.data.Dataset, int]:
  """(dataset, num_batches) with every example once; padding has mask 0.

  ``input_kind="features"``: precomputed vectors, not preprocessed.
  ``standardize=False``: uint8 images (`preprocess_for_eval`'s), which the
  eval step standardises on the device.
  """
  ds = source.read(split, process_index=shard.process_index,
                   process_count=shard.process_count)
  local_count = int(ds.cardinality())
  if local_count < 0:  # Unknown cardinality: count once (small splits only).
    local_count = int(ds.reduce(0, lambda n, _: n + 1))
  num_batches = num_eval_batches(source.num_examples(split), shard)
  holds_features = _holds_features(input_kind)
  ds = ds.map(lambda ex: {"image": ex["image"] if holds_features else
                          preprocess_for_eval(ex["image"], config,
                                              standardize=standardize),
                          "label": ex["label"],
                          "mask": tf.constant(1.0, tf.float32)},
              num_parallel_calls=tf.data.AUTOTUNE)
  if config.cache:
    ds = ds.cache()
  pad_count = num_batches * shard.local_batch_size - local_count
  image_spec = ds.element_spec["image"]
  padding = tf.data.Dataset.from_tensors(
      {"image": tf.zeros(image_spec.shape, image_spec.dtype),
       "label": tf.constant(0, tf.int64),
       "mask": tf.constant(0.0, tf.float32)}).repeat(pad_count)
  ds = ds.concatenate(padding).batch(shard.local_batch_size)
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_options(config))
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
