"""Stateless image augmentations for tf.data, with torchvision's semantics.

Every augmentation comes in two forms:

* a per-image function (``random_resized_crop``, ``rand_augment``, ...):
  ONE image laid out HxWxC and an explicit ``seed`` in, one image out;
* a split form for the training pipeline: ``sample_*(seed, num, ...)``
  draws the random parameters of ``num`` images from one seed, and
  ``*_batch`` applies them to a batch [B, H, W, C] with per-image
  parameters [B, ...]. Each stage is then a few ops for the whole batch:
  per-op dispatch, not arithmetic, is what a per-image tf.data map of small
  images spends its time on.

The per-image function IS the split form with ``num=1`` on a batch of one,
and row 0 of a ``sample_*(seed, num)`` draw is the ``num=1`` draw, so the
Pillow checks of the per-image functions cover the batch code.

A seed is a shape-[2] int32/int64 tensor (or a pair of Python ints). Only
``tf.random.stateless_*`` ops are used, and sub-seeds are derived with
``tf.random.experimental.stateless_split``, so the output is a pure function
of (image, seed, arguments). The training pipeline derives one seed per
batch from (global seed, step); a resumed run therefore reproduces the same
augmented images whatever the parallelism.
Everything is graph-compatible (usable inside ``tf.data.Dataset.map``); there
are no Python loops over tensors, and the "up to 10 attempts" samplers draw
all 10 candidates at once and keep the first valid one. Batch ops that
choose a different operation per image (RandAugment, the order of
ColorJitter) run each operation once, on the images that drew it.

What each function reproduces (the two recipes in specs/seeds.md):

* Seed 002: ``v2.RandomResizedCrop((32, 32), antialias=True)`` and
  ``v2.RandomHorizontalFlip(0.5)`` on float images in [0, 1].
* Seed 004: ``RandomResizedCrop(32, scale=(0.75, 1), ratio=(1, 1))``,
  ``RandomHorizontalFlip``, ``RandAugment(num_ops=1, magnitude=8)`` and
  ``ColorJitter(0.1, 0.1, 0.1)`` run on PIL images there (CIFAR10 yields PIL
  images and those transforms precede ToTensor), then ToTensor, Normalize,
  ``RandomErasing(p=0.25)``.

Deviations from torchvision that could not be avoided
------------------------------------------------------
1. Random streams. Torch's global generator is replaced by counter-based
   stateless draws, so the same seed does not give torch's crops/ops. Every
   sampling DISTRIBUTION is torchvision's (including the 10-attempt
   rejection loops and their fallbacks); only the bits differ. Draws that
   torchvision makes conditionally (e.g. the sign of an unsigned op, the
   crop offset of a rejected attempt) are made unconditionally here and
   ignored, which does not change any distribution.
2. ``random_resized_crop`` reproduces PIL's antialiased bilinear resize
   (the weights torch's ``antialias=True`` path also uses). uint8 images
   follow Pillow's 8-bit path bit-exactly (22-bit fixed-point weights,
   horizontal pass then vertical pass, each rounded to uint8); checked
   against Pillow. Pillow >= 13 does the vertical pass first when the height
   shrinks much more than the width, which moves some pixels by 1 grey level
   in that case only; the Pillow of the seed's era (and the seed's 32 -> 32
   upsampling crops) always goes horizontal first. Float images are
   resampled in float32 with the same weights and no intermediate rounding
   (torch's float path), up to float32 rounding.
3. RandAugment's uint8 ops follow the PIL backend (what seed 004 ran):
   grayscale is PIL's ``L`` (``(19595 R + 38470 G + 7471 B + 2**15) >> 16``),
   Contrast blends with the rounded mean of ``L``, blends truncate like
   ``Image.blend``, Sharpness uses PIL's SMOOTH kernel with rounding and an
   untouched 1-pixel border. All 14 ops were checked bit-exact against
   Pillow (with torchvision's magnitudes and affine matrices) on random and
   low-contrast images. torchvision's tensor backend (RandAugment on uint8
   tensors) differs from PIL by at most 1 grey level in Color/Contrast (it
   truncates the grayscale and does not round the contrast mean).
4. Geometric ops use ``ImageProjectiveTransformV3`` (float32 coordinates,
   nearest = round-half-away-from-zero). The transform is shifted so that
   it samples PIL's ``floor`` of the continuous source coordinate; the only
   remaining differences are (a) a source coordinate of exactly 0.0 maps to
   the fill value instead of column/row 0, and (b) float32 vs PIL's 16.16
   fixed point can pick a neighbouring pixel when the source coordinate is
   within ~1e-5 of a pixel edge. ``fill`` must be a scalar (one value for
   all channels); torchvision also accepts a per-channel sequence.
5. ``color_jitter`` on float images reproduces torchvision's float-tensor
   ops (clamped to [0, 1] after each); on uint8 images it reproduces the PIL
   ops (ImageEnhance, truncating to uint8 after each). Hue on uint8 goes
   through float HSV and rounds, whereas PIL shifts a uint8 hue channel
   (seed 004 uses hue=0, so hue is never applied there).
6. ``random_erasing(value='random')`` draws N(0, 1) noise for the whole
   image and uses the part inside the box; the distribution equals
   torchvision's per-box draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from jaxattn.data.tf_import import tf

_NUM_ATTEMPTS = 10

# RandAugment operations, in torchvision's order (op index = position).
RAND_AUGMENT_OPS = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)
_SIGNED_OPS = frozenset({
    "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
    "Color", "Contrast", "Sharpness"
})


# ----------------------------------------------------------------------------
# Seeds, shared samplers and batch helpers.
# ----------------------------------------------------------------------------


def _as_seed(seed) -> tf.Tensor:
  seed = tf.convert_to_tensor(seed)
  if seed.dtype not in (tf.int32, tf.int64):
    raise TypeError(f"seed must be int32 or int64, got {seed.dtype}.")
  if not seed.shape.is_compatible_with([2]):
    raise ValueError(f"seed must have shape [2], got {seed.shape}.")
  return tf.ensure_shape(seed, [2])


def _split(seed, num: int) -> list[tf.Tensor]:
  return tf.unstack(
      tf.random.experimental.stateless_split(_as_seed(seed), num=num), num=num)


def _randint(u: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
  """Maps u ~ U[0, 1) (float64) to an int32 uniform in [0, n)."""
  n64 = tf.cast(n, tf.float64)
  return tf.minimum(tf.cast(tf.floor(u * n64), tf.int32), n - 1)


def _per_row(values, num) -> tf.Tensor:
  """A scalar or [num] vector -> [num] (for per-image sizes)."""
  return tf.broadcast_to(tf.convert_to_tensor(values), [num])


def _sample_boxes(seed, num, height, width, scale, ratio, *,
                  height_first: bool):
  """Draws the 10 (h, w, u_i, u_j) candidates of torchvision's samplers.

  For ``num`` images of ``height`` x ``width`` (scalars or [num]): h, w
  int32 [num, 10], u float64 [num, 10, 2]. Area fraction ~ U(scale), log
  aspect ~ U(log ratio) (float32 like torch's ``uniform_``), then
  ``int(round(sqrt(...)))`` in float64 like Python's ``round`` (half to
  even). RandomResizedCrop uses w = sqrt(A r), h = sqrt(A / r);
  RandomErasing swaps them (``height_first``).
  """
  s_area, s_ratio, s_pos = _split(seed, 3)
  n = _NUM_ATTEMPTS
  frac = tf.random.stateless_uniform(
      [num, n], s_area, minval=scale[0], maxval=scale[1], dtype=tf.float32)
  log_r = tf.random.stateless_uniform(
      [num, n], s_ratio, minval=math.log(ratio[0]), maxval=math.log(ratio[1]),
      dtype=tf.float32)
  aspect = tf.cast(tf.exp(log_r), tf.float64)
  area = tf.cast(_per_row(height * width, num), tf.float64)[:, None]
  target = area * tf.cast(frac, tf.float64)
  a = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
  b = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
  h, w = (a, b) if height_first else (b, a)
  u = tf.random.stateless_uniform([num, n, 2], s_pos, dtype=tf.float64)
  return h, w, u


def _first_true(mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Per row of [num, n]: (first True's index, clamped to valid; whether any)."""
  n = tf.shape(mask)[1]
  idx = tf.reduce_min(tf.where(mask, tf.range(n), n), axis=1)
  return tf.minimum(idx, n - 1), idx < n


def _pick(values: tf.Tensor, idx: tf.Tensor) -> tf.Tensor:
  """values[b, idx[b]] for every row b."""
  return tf.gather(values, idx, batch_dims=1)


def _restore_dtype(x: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
  """float32 result -> ``dtype``; integer dtypes are rounded half-up and clipped."""
  if dtype.is_integer:
    x = tf.floor(tf.clip_by_value(x, dtype.min, dtype.max) + 0.5)
    return tf.cast(tf.clip_by_value(x, dtype.min, dtype.max), dtype)
  return tf.cast(x, dtype)


def _per_image(values, dtype=None) -> tf.Tensor:
  """Per-image values (shape [B], or a scalar for all) -> [B, 1, 1, 1]."""
  values = tf.convert_to_tensor(values)
  if dtype is not None:
    values = tf.cast(values, dtype)
  return tf.reshape(values, [-1, 1, 1, 1])


def _check_batch(images) -> tf.Tensor:
  images = tf.convert_to_tensor(images)
  if images.shape.rank != 4:
    raise ValueError(
        f"Expected a batch of images [B, H, W, C], got shape {images.shape}.")
  return images


def _switch_per_image(index: tf.Tensor, branches: Sequence[Callable],
                      images: tf.Tensor, params) -> tf.Tensor:
  """out[b] = branches[index[b]](images[b], params[b]), one call per branch.

  Each branch gets the sub-batch of the images that chose it (possibly
  empty) with their rows of ``params`` (a tensor or a nest of tensors with
  leading dimension B), and must return a batch of ``images``' shape and
  dtype.
  """
  index = tf.cast(tf.reshape(index, [-1]), tf.int32)
  rows = tf.range(tf.shape(images)[0])
  parts = tf.dynamic_partition(rows, index, len(branches))
  outputs = []
  for branch, part in zip(branches, parts):
    sub_params = tf.nest.map_structure(lambda p, part=part: tf.gather(p, part),
                                       params)
    out = branch(tf.gather(images, part), sub_params)
    outputs.append(tf.ensure_shape(tf.cast(out, images.dtype),
                                   [None, *images.shape[1:]]))
  return tf.ensure_shape(tf.dynamic_stitch(parts, outputs), images.shape)


# ----------------------------------------------------------------------------
# Antialiased resize (PIL's bilinear filter).
# ----------------------------------------------------------------------------

_PIL_PRECISION_BITS = 22  # 32 - 8 - 2, Pillow's Resample.c for 8-bit data.


def _crop_resize_weights(start: tf.Tensor, length: tf.Tensor, in_size,
                         out_size: int) -> tf.Tensor:
  """[B, out_size, in_size] float64 weights of PIL's ``precompute_coeffs``.

  For each image, the crop [start, start + length) of an axis of ``in_size``
  pixels is resized to ``out_size``: triangle filter with support
  ``max(length / out, 1)``, taps [int(center - support + .5), int(center +
  support + .5)) clipped to the crop, normalised to sum 1; pixels outside
  the crop get weight 0 (so the crop needs no slicing, and a batch of crops
  of different sizes is one matrix product). torch's antialiased bilinear
  resize uses the same weights (it was ported from PIL).
  """
  length = tf.cast(tf.reshape(length, [-1]), tf.float64)[:, None]  # [B, 1]
  start = tf.cast(tf.reshape(start, [-1]), tf.float64)[:, None, None]
  scale = length / float(out_size)
  filterscale = tf.maximum(scale, 1.0)
  support = filterscale  # bilinear support 1.0 * filterscale
  center = (tf.range(out_size, dtype=tf.float64)[None, :] + 0.5) * scale
  xmin = tf.maximum(tf.floor(center - support + 0.5), 0.0)  # values >= -.5
  xmax = tf.minimum(tf.floor(center + support + 0.5), length)
  # Crop coordinates of every input pixel: [B, 1, in_size].
  x = tf.range(in_size, dtype=tf.float64)[None, None, :] - start
  center, xmin, xmax = center[..., None], xmin[..., None], xmax[..., None]
  filterscale = filterscale[..., None]
  w = tf.maximum(1.0 - tf.abs((x - center + 0.5) * (1.0 / filterscale)), 0.0)
  w = tf.where((x >= xmin) & (x < xmax), w, 0.0)
  total = tf.reduce_sum(w, axis=-1, keepdims=True)
  return tf.math.divide_no_nan(w, total)


def resized_crop_batch(images, boxes, size: tuple[int, int]) -> tf.Tensor:
  """Crops ``boxes`` [B, 4] (top, left, height, width) and resizes to ``size``.

  Antialiased bilinear, separable, horizontal pass first. uint8 input
  follows Pillow's 8-bit path exactly (22-bit fixed-point weights, each
  pass rounded to uint8) and returns uint8; other dtypes are resampled in
  float32 without intermediate rounding (torch's float path) and returned
  as float32. Pixels outside a box are never read, so a batch padded to
  its largest image gives each image's own crop.
  """
  images = _check_batch(images)
  boxes = tf.cast(tf.convert_to_tensor(boxes), tf.int32)
  shape = tf.shape(images)
  num, height, width = shape[0], shape[1], shape[2]
  channels = images.shape[-1]
  out_h, out_w = size
  top, left, crop_h, crop_w = tf.unstack(boxes, num=4, axis=1)
  kh = _crop_resize_weights(top, crop_h, height, out_h)  # [B, oh, H]
  kw = _crop_resize_weights(left, crop_w, width, out_w)  # [B, ow, W]
  if images.dtype == tf.uint8:
    # Pillow's fixed point in int32: the weights of an output pixel sum to
    # 2**22 (+ a rounding error per tap), so sums stay below 255 * 2**22 +
    # 2**21 < 2**31.
    dtype = tf.int32
    kh, kw = [tf.cast(tf.floor(0.5 + k * float(1 << _PIL_PRECISION_BITS)),
                      dtype) for k in (kh, kw)]

    def rounded(acc):  # Back to 0..255, as Pillow clips each pass.
      acc = tf.bitwise.right_shift(acc + (1 << (_PIL_PRECISION_BITS - 1)),
                                   _PIL_PRECISION_BITS)
      return tf.clip_by_value(acc, 0, 255)
  else:
    dtype = tf.float32
    kh, kw = tf.cast(kh, dtype), tf.cast(kw, dtype)
    rounded = lambda acc: acc
  # Each pass is one batched matmul over the axis it resamples; the layouts
  # are chosen so that only two transposes are needed in all.
  x = tf.cast(tf.transpose(images, [0, 2, 1, 3]), dtype)  # [B, W, H, C]
  x = rounded(tf.matmul(kw, tf.reshape(x, [num, width, height * channels])))
  x = tf.transpose(tf.reshape(x, [num, out_w, height, channels]), [0, 2, 1, 3])
  x = rounded(tf.matmul(kh, tf.reshape(x, [num, height, out_w * channels])))
  x = tf.reshape(x, [num, out_h, out_w, channels])
  out = tf.cast(x, tf.uint8) if images.dtype == tf.uint8 else x
  return tf.ensure_shape(out, [images.shape[0], out_h, out_w, channels])


def resized_crop(image: tf.Tensor, box: tf.Tensor,
                         size: tuple[int, int]) -> tf.Tensor:
  """``resized_crop_batch`` for one HxWxC image of any size, box [4].

  The crop is sliced out first, so the filter runs over the crop alone
  (a small crop of a large image costs what the crop costs).
  """
  box = tf.cast(box, tf.int32)
  crop = tf.slice(image, tf.stack([box[0], box[1], 0]),
                  tf.stack([box[2], box[3], -1]))
  crop = tf.ensure_shape(crop, [None, None, image.shape[-1]])  # Keeps C static.
  full = tf.stack([0, 0, box[2], box[3]])[None]
  return resized_crop_batch(crop[None], full, size)[0]


def _resize_antialiased(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
  """Antialiased bilinear resize of HxWxC to ``size`` (PIL / torch AA)."""
  image = tf.convert_to_tensor(image)
  shape = tf.shape(image)
  return resized_crop(image, tf.stack([0, 0, shape[0], shape[1]]),
                              size)


# ----------------------------------------------------------------------------
# RandomResizedCrop / RandomHorizontalFlip.
# ----------------------------------------------------------------------------


def sample_crop(seed, num, height, width, *,
                scale: tuple[float, float] = (0.08, 1.0),
                ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)):
  """RandomResizedCrop's boxes for ``num`` images of ``height`` x ``width``.

  Sizes are scalars or [num]. Returns int32 [num, 4]: (top, left, crop
  height, crop width). Per image, up to 10 candidates (area fraction ~
  U(scale), log-ratio ~ U(log ratio), ``w = round(sqrt(A r))``, ``h =
  round(sqrt(A / r))``) are drawn at once; the first with ``0 < w <= W and
  0 < h <= H`` is used, its top-left corner uniform over valid positions.
  Otherwise torchvision's fallback: a central crop with the aspect ratio
  clamped to ``ratio``.
  """
  height = _per_row(tf.cast(height, tf.int32), num)
  width = _per_row(tf.cast(width, tf.int32), num)
  h, w, u = _sample_boxes(
      seed, num, height, width, scale, ratio, height_first=False)
  valid = ((w > 0) & (w <= width[:, None]) & (h > 0) &
           (h <= height[:, None]))
  idx, found = _first_true(valid)
  h_s, w_s = _pick(h, idx), _pick(w, idx)
  u = _pick(u, idx)  # [num, 2]
  i_s = _randint(u[:, 0], height - h_s + 1)
  j_s = _randint(u[:, 1], width - w_s + 1)

  # Fallback: central crop, aspect ratio clamped into [min(ratio), max(ratio)].
  r_min, r_max = float(min(ratio)), float(max(ratio))
  h64, w64 = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
  in_ratio = w64 / h64
  too_tall = in_ratio < r_min
  too_wide = in_ratio > r_max
  w_f = tf.where(too_wide, tf.cast(tf.round(h64 * r_max), tf.int32), width)
  h_f = tf.where(too_tall, tf.cast(tf.round(w64 / r_min), tf.int32), height)
  i_f = (height - h_f) // 2
  j_f = (width - w_f) // 2
  return tf.stack([tf.where(found, i_s, i_f), tf.where(found, j_s, j_f),
                   tf.where(found, h_s, h_f), tf.where(found, w_s, w_f)],
                  axis=1)


def random_resized_crop(image,
                        seed,
                        *,
                        size: int | tuple[int, int],
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)):
  """torchvision ``RandomResizedCrop(size, scale, ratio, antialias=True)``.

  Args:
    image: HxWxC, any range; uint8 (0..255) or float (e.g. [0, 1]). The
      output has the input's dtype (uint8 results are rounded like PIL;
      float outputs are not clipped).
    seed: shape-[2] int32/int64 stateless seed.
    size: output (height, width), or an int for a square output.
    scale: range of the crop's area as a fraction of the image area.
    ratio: range of the crop's aspect ratio w/h (sampled log-uniformly).

  The box is ``sample_crop``'s; the crop is resized bilinearly with
  antialiasing (``resized_crop_batch``).
  """
  if isinstance(size, int):
    size = (size, size)
  size = (int(size[0]), int(size[1]))
  image = tf.convert_to_tensor(image)
  dtype = image.dtype
  shape = tf.shape(image)
  box = sample_crop(seed, 1, shape[0], shape[1], scale=scale, ratio=ratio)[0]
  out = resized_crop(image, box, size)
  if out.dtype != dtype:
    out = _restore_dtype(out, dtype)
  return tf.ensure_shape(out, [size[0], size[1], image.shape[-1]])


def sample_flip(seed, num, p: float = 0.5) -> tf.Tensor:
  """RandomHorizontalFlip's coins, bool [num]: True (mirror) with probability p."""
  u = tf.random.stateless_uniform([num], _as_seed(seed), dtype=tf.float32)
  return u < p


def flip_batch(images, flip) -> tf.Tensor:
  """Mirrors the width axis of the images whose ``flip`` [B] is True."""
  images = _check_batch(images)
  return tf.where(_per_image(flip), tf.reverse(images, axis=[2]), images)


def random_horizontal_flip(image, seed, p: float = 0.5):
  """torchvision ``RandomHorizontalFlip(p)``: mirror the width axis if u < p.

  Any dtype and range; the output has the input's dtype and range.
  """
  image = tf.convert_to_tensor(image)
  return flip_batch(image[None], sample_flip(seed, 1, p))[0]


# ----------------------------------------------------------------------------
# uint8 primitives with PIL semantics (used by RandAugment and ColorJitter).
# All take a batch [B, H, W, C] and per-image factors [B] (or one scalar).
# ----------------------------------------------------------------------------


def _num_channels(image: tf.Tensor) -> int:
  c = image.shape[-1]
  if c is None:
    raise ValueError("The channel dimension must be known statically.")
  if c not in (1, 3):
    raise ValueError(f"Expected 1 or 3 channels, got {c}.")
  return c


def _check_uint8(image) -> tf.Tensor:
  image = tf.convert_to_tensor(image)
  if image.dtype != tf.uint8:
    raise TypeError(f"Expected a uint8 image (0..255), got {image.dtype}.")
  return image


def _gray_u8(images: tf.Tensor) -> tf.Tensor:
  """PIL ``convert('L')`` as int32 [..., 1]: (19595R + 38470G + 7471B + 2^15) >> 16."""
  x = tf.cast(images, tf.int32)
  if _num_channels(images) == 1:
    return x
  weights = tf.constant([19595, 38470, 7471], tf.int32)
  return tf.bitwise.right_shift(
      tf.reduce_sum(x * weights, axis=-1, keepdims=True) + 32768, 16)


def _blend_u8(degenerate: tf.Tensor, images: tf.Tensor, factor) -> tf.Tensor:
  """PIL ``Image.blend(degenerate, image, factor)`` for uint8 data.

  float32 ``deg + factor * (img - deg)``, clipped to [0, 255] and truncated.
  """
  factor = _per_image(factor, tf.float32)  # ImagingBlend takes a C float.
  deg = tf.cast(degenerate, tf.float32)
  img = tf.cast(images, tf.float32)
  out = deg + factor * (img - deg)
  return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)


def _adjust_brightness_u8(images, factor):
  """PIL ``ImageEnhance.Brightness(image).enhance(factor)``."""
  return _blend_u8(tf.zeros_like(images), images, factor)


def _adjust_color_u8(images, factor):
  """PIL ``ImageEnhance.Color`` (saturation): blend with the ``L`` image."""
  gray = tf.broadcast_to(_gray_u8(images), tf.shape(images))
  return _blend_u8(gray, images, factor)


def _adjust_contrast_u8(images, factor):
  """PIL ``ImageEnhance.Contrast``: blend with int(mean(L) + 0.5)."""
  mean = tf.reduce_mean(tf.cast(_gray_u8(images), tf.float64), axis=[1, 2, 3],
                        keepdims=True)
  degenerate = tf.broadcast_to(tf.floor(mean + 0.5), tf.shape(images))
  return _blend_u8(degenerate, images, factor)


def _adjust_sharpness_u8(images, factor):
  """PIL ``ImageEnhance.Sharpness``: blend with ``filter(SMOOTH)``.

  SMOOTH is [[1,1,1],[1,5,1],[1,1,1]] / 13 rounded to nearest; PIL leaves
  the outermost row/column unfiltered (so does torchvision's tensor path).
  """
  x = tf.cast(images, tf.int32)
  shape = tf.shape(images)
  height, width = shape[1], shape[2]
  padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
  box = tf.add_n([
      padded[:, dy:dy + height, dx:dx + width]
      for dy in range(3)
      for dx in range(3)
  ])
  total = box + 4 * x
  smooth = (2 * total + 13) // 26  # round(total / 13); never a tie.
  rows = tf.range(height)[:, None, None]
  cols = tf.range(width)[None, :, None]
  interior = (rows > 0) & (rows < height - 1) & (cols > 0) & (cols < width - 1)
  degenerate = tf.where(interior[None], smooth, x)
  return _blend_u8(degenerate, images, factor)


def _posterize(images, bits):
  """Keep the ``bits`` most significant bits (PIL ``ImageOps.posterize``)."""
  bits = _per_image(bits, tf.int32)
  mask = 256 - tf.bitwise.left_shift(1, 8 - bits)
  mask = tf.broadcast_to(tf.cast(mask, tf.uint8), tf.shape(images))
  return tf.bitwise.bitwise_and(images, mask)


def _solarize(images, threshold):
  """Invert pixels >= threshold (PIL ``ImageOps.solarize``)."""
  threshold = _per_image(threshold, tf.float32)
  return tf.where(tf.cast(images, tf.float32) >= threshold, 255 - images,
                  images)


def _autocontrast(images):
  """PIL ``ImageOps.autocontrast`` (cutoff 0), per image and channel.

  lut[v] = clip(int(v * scale + offset), 0, 255) with scale = 255 / (hi - lo),
  offset = -lo * scale, in float64 exactly as PIL computes it; channels with
  hi <= lo are left unchanged.
  """
  x = tf.cast(images, tf.float64)
  lo = tf.reduce_min(x, axis=[1, 2], keepdims=True)
  hi = tf.reduce_max(x, axis=[1, 2], keepdims=True)
  scale = 255.0 / tf.maximum(hi - lo, 1.0)
  offset = -lo * scale
  mapped = tf.clip_by_value(tf.cast(x * scale + offset, tf.int32), 0, 255)
  return tf.where(hi > lo, tf.cast(mapped, tf.uint8), images)


def _equalize(images):
  """PIL ``ImageOps.equalize`` / torchvision ``F.equalize``, per image and channel.

  Per channel: step = (N - count of the last non-empty bin) // 255; if step is
  0 the channel is unchanged, else lut[i] = min(255, (step // 2 +
  #pixels < i) // step).
  """
  x = tf.cast(images, tf.int32)
  channels = _num_channels(images)
  num_images = tf.shape(x)[0]
  # One histogram per (image, channel): a flat bin per pixel.
  offsets = (tf.range(num_images)[:, None, None, None] * channels +
             tf.range(channels)) * 256
  index = x + offsets
  num_bins = num_images * channels * 256
  hist = tf.math.bincount(
      tf.reshape(index, [-1]), minlength=num_bins, maxlength=num_bins,
      dtype=tf.int32)
  hist = tf.reshape(hist, [num_images, channels, 256])
  bins = tf.range(256)
  last_bin = tf.reduce_max(tf.where(hist > 0, bins, 0), axis=-1)
  last_count = tf.gather(hist, last_bin[..., None], batch_dims=2)[..., 0]
  step = (tf.reduce_sum(hist, axis=-1) - last_count) // 255  # [B, C]
  safe_step = tf.maximum(step, 1)[..., None]
  lut = (step[..., None] // 2 + tf.cumsum(hist, axis=-1, exclusive=True))
  lut = tf.minimum(lut // safe_step, 255)
  lut = tf.where(step[..., None] > 0, lut, bins)
  out = tf.gather(tf.reshape(lut, [-1]), index)
  return tf.cast(out, tf.uint8)


# ----------------------------------------------------------------------------
# Geometric ops (torchvision's PIL path: F.affine / F.rotate).
# ----------------------------------------------------------------------------


def _inverse_affine_matrix(center, angle, translate, scale, shear):
  """Port of ``torchvision.transforms.functional._get_inverse_affine_matrix``.

  Returns [a, b, c, d, e, f]: output point (x, y) samples the input at
  (a x + b y + c, d x + e y + f), all in PIL's continuous coordinates (the
  image spans [0, W] x [0, H], pixel centres at +0.5). Angles in degrees;
  every argument may be per image ([B]).
  """
  f64 = lambda v: tf.cast(v, tf.float64)
  rot = f64(angle) * (math.pi / 180.0)
  sx = f64(shear[0]) * (math.pi / 180.0)
  sy = f64(shear[1]) * (math.pi / 180.0)
  cx, cy = f64(center[0]), f64(center[1])
  tx, ty = f64(translate[0]), f64(translate[1])
  a = tf.cos(rot - sy) / tf.cos(sy)
  b = -tf.cos(rot - sy) * tf.tan(sx) / tf.cos(sy) - tf.sin(rot)
  c = tf.sin(rot - sy) / tf.cos(sy)
  d = -tf.sin(rot - sy) * tf.tan(sx) / tf.cos(sy) + tf.cos(rot)
  m = [d / scale, -b / scale, 0.0, -c / scale, a / scale, 0.0]
  m[2] = m[0] * (-cx - tx) + m[1] * (-cy - ty) + cx
  m[5] = m[3] * (-cx - tx) + m[4] * (-cy - ty) + cy
  return m


def _affine_u8(images, matrix, fill=0):
  """PIL ``Image.transform(AFFINE, matrix, NEAREST, fillcolor=fill)`` per image.

  PIL samples input pixel floor(M (x + .5, y + .5)); ImageProjectiveTransformV3
  samples round(M' (x, y)), so M' = M(x + .5, y + .5) - .5 (see deviation 4).
  """
  num_images = tf.shape(images)[0]
  a, b, c, d, e, f = [
      tf.broadcast_to(tf.cast(v, tf.float64), [num_images]) for v in matrix]
  c = c + 0.5 * a + 0.5 * b - 0.5
  f = f + 0.5 * d + 0.5 * e - 0.5
  zero = tf.zeros([num_images], tf.float64)
  transforms = tf.cast(tf.stack([a, b, c, d, e, f, zero, zero], axis=1),
                       tf.float32)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=images,
      transforms=transforms,
      output_shape=tf.shape(images)[1:3],
      fill_value=tf.cast(fill, tf.float32),
      interpolation="NEAREST",
      fill_mode="CONSTANT")
  return tf.ensure_shape(out, images.shape)


def _shear_x(images, magnitude, fill=0):
  """torchvision RandAugment ShearX: F.affine(shear=[deg(atan(m)), 0], center=[0, 0])."""
  shear = tf.atan(tf.cast(magnitude, tf.float64)) * (180.0 / math.pi)
  m = _inverse_affine_matrix([0.0, 0.0], 0.0, [0.0, 0.0], 1.0, [shear, 0.0])
  return _affine_u8(images, m, fill)


def _shear_y(images, magnitude, fill=0):
  """torchvision RandAugment ShearY: F.affine(shear=[0, deg(atan(m))], center=[0, 0])."""
  shear = tf.atan(tf.cast(magnitude, tf.float64)) * (180.0 / math.pi)
  m = _inverse_affine_matrix([0.0, 0.0], 0.0, [0.0, 0.0], 1.0, [0.0, shear])
  return _affine_u8(images, m, fill)


def _image_center(images):
  shape = tf.cast(tf.shape(images), tf.float64)
  return [shape[2] * 0.5, shape[1] * 0.5]


def _translate(images, dx, dy, fill=0):
  """F.affine(translate=[int(dx), int(dy)]): content moves right/down by +dx/+dy."""
  dx = tf.cast(tf.cast(dx, tf.int32), tf.float64)  # int(): toward zero.
  dy = tf.cast(tf.cast(dy, tf.int32), tf.float64)
  m = _inverse_affine_matrix(
      _image_center(images), 0.0, [dx, dy], 1.0, [0.0, 0.0])
  return _affine_u8(images, m, fill)


def _rotate(images, degrees, fill=0):
  """F.rotate(degrees) on PIL: counter-clockwise about the image centre (W/2, H/2)."""
  m = _inverse_affine_matrix(
      _image_center(images), -tf.cast(degrees, tf.float64), [0.0, 0.0], 1.0,
      [0.0, 0.0])
  return _affine_u8(images, m, fill)


# ----------------------------------------------------------------------------
# RandAugment.
# ----------------------------------------------------------------------------


def _linspace_at(start: float, end, index, num: int) -> tf.Tensor:
  """``torch.linspace(start, end, num)[index]`` in float32."""
  end = tf.cast(end, tf.float32)
  frac = tf.cast(index, tf.float32) / float(max(num - 1, 1))
  return start + (end - start) * frac


def _op_magnitude(op_name: str, magnitude, num_magnitude_bins: int, height,
                  width) -> tf.Tensor:
  """torchvision ``RandAugment._augmentation_space(...)[op][magnitude]``."""
  n = num_magnitude_bins
  if op_name in ("ShearX", "ShearY"):
    return _linspace_at(0.0, 0.3, magnitude, n)
  if op_name == "TranslateX":
    return _linspace_at(0.0, 150.0 / 331.0 * tf.cast(width, tf.float32),
                        magnitude, n)
  if op_name == "TranslateY":
    return _linspace_at(0.0, 150.0 / 331.0 * tf.cast(height, tf.float32),
                        magnitude, n)
  if op_name == "Rotate":
    return _linspace_at(0.0, 30.0, magnitude, n)
  if op_name in ("Brightness", "Color", "Contrast", "Sharpness"):
    return _linspace_at(0.0, 0.9, magnitude, n)
  if op_name == "Posterize":
    # 8 - (arange(n) / ((n - 1) / 4)).round().int(); round half to even.
    ratio = tf.cast(magnitude, tf.float32) / ((n - 1) / 4.0 if n > 1 else 1.0)
    return 8.0 - tf.round(ratio)
  if op_name == "Solarize":
    return _linspace_at(255.0, 0.0, magnitude, n)
  return tf.constant(0.0, tf.float32)


def _rand_augment_branches(magnitude, fill, num_magnitude_bins: int, height,
                           width) -> list[Callable]:
  """The 14 ops as ``fn(images, sign)``, sign = -1/+1 per image (float32 [B])."""

  def value(name, sign):
    v = _op_magnitude(name, magnitude, num_magnitude_bins, height, width)
    return sign * v if name in _SIGNED_OPS else v

  def factor(name, sign):
    # torchvision passes 1.0 + magnitude (Python double) on to PIL.
    return 1.0 + tf.cast(value(name, sign), tf.float64)

  return [
      lambda x, s: x,
      lambda x, s: _shear_x(x, value("ShearX", s), fill),
      lambda x, s: _shear_y(x, value("ShearY", s), fill),
      lambda x, s: _translate(x, value("TranslateX", s), 0.0, fill),
      lambda x, s: _translate(x, 0.0, value("TranslateY", s), fill),
      lambda x, s: _rotate(x, value("Rotate", s), fill),
      lambda x, s: _adjust_brightness_u8(x, factor("Brightness", s)),
      lambda x, s: _adjust_color_u8(x, factor("Color", s)),
      lambda x, s: _adjust_contrast_u8(x, factor("Contrast", s)),
      lambda x, s: _adjust_sharpness_u8(x, factor("Sharpness", s)),
      lambda x, s: _posterize(x, value("Posterize", s)),
      lambda x, s: _solarize(x, value("Solarize", s)),
      lambda x, s: _autocontrast(x),
      lambda x, s: _equalize(x),
  ]


def apply_op_batch(images,
                   op_index,
                   magnitude,
                   negate,
                   fill=0,
                   num_magnitude_bins: int = 31) -> tf.Tensor:
  """Applies RandAugment op ``op_index[b]`` (see ``RAND_AUGMENT_OPS``) to image b.

  Args:
    images: uint8 [B, H, W, C] (C = 1 or 3), values 0..255.
    op_index: int32 [B] in [0, 14), or a Python int for all images.
    magnitude: magnitude BIN in [0, num_magnitude_bins) (int or scalar
      tensor), shared by the batch; the op's value is torchvision's table
      entry for that bin.
    negate: bool [B] (or one bool): use -magnitude; ignored by unsigned ops.
    fill: scalar fill value for pixels that geometric ops move in.
    num_magnitude_bins: number of bins (torchvision default 31).

  Returns:
    uint8 images of the same shape.
  """
  images = _check_uint8(_check_batch(images))
  shape = tf.shape(images)
  num_images = shape[0]
  branches = _rand_augment_branches(magnitude, fill, num_magnitude_bins,
                                    shape[1], shape[2])
  negate = tf.broadcast_to(tf.cast(negate, tf.bool), [num_images])
  sign = tf.where(negate, -1.0, 1.0)
  if isinstance(op_index, int):
    out = branches[op_index](images, sign)
  else:
    op_index = tf.broadcast_to(tf.cast(op_index, tf.int32), [num_images])
    out = _switch_per_image(op_index, branches, images, sign)
  return tf.ensure_shape(out, images.shape)


def _apply_op(image,
              op_index,
              magnitude,
              negate=False,
              fill=0,
              num_magnitude_bins: int = 31):
  """``apply_op_batch`` for one uint8 HxWxC image (op_index: int or scalar)."""
  image = _check_uint8(image)
  if not isinstance(op_index, int):
    op_index = tf.reshape(op_index, [1])
  out = apply_op_batch(image[None], op_index, magnitude,
                       tf.reshape(tf.cast(negate, tf.bool), [1]), fill,
                       num_magnitude_bins)[0]
  return tf.ensure_shape(out, image.shape)


def _check_magnitude(magnitude: int, num_magnitude_bins: int):
  if not 0 <= magnitude < num_magnitude_bins:
    raise ValueError(
        f"magnitude must be in [0, {num_magnitude_bins}), got {magnitude}.")


def sample_rand_augment(seed, num, num_ops: int) -> tuple[tf.Tensor, tf.Tensor]:
  """RandAugment's draws for ``num`` images: op index int32 and negate bool,
  both [num, num_ops].

  Each op is uniform over the 14 ops; a signed op's magnitude is negated
  with probability 1/2.
  """
  if num_ops <= 0:
    return tf.zeros([num, 0], tf.int32), tf.zeros([num, 0], tf.bool)
  seeds = _split(seed, 2 * num_ops)
  op_index, negate = [], []
  for k in range(num_ops):  # Static unrolling over a Python int.
    op_index.append(tf.random.stateless_uniform(
        [num], seeds[2 * k], minval=0, maxval=len(RAND_AUGMENT_OPS),
        dtype=tf.int32))
    negate.append(tf.random.stateless_uniform(
        [num], seeds[2 * k + 1], minval=0, maxval=2, dtype=tf.int32) > 0)
  return tf.stack(op_index, axis=1), tf.stack(negate, axis=1)


def rand_augment_batch(images, op_index, negate, *, magnitude: int = 8,
                       num_magnitude_bins: int = 31, fill: float = 0):
  """RandAugment on a uint8 batch with ``sample_rand_augment``'s draws.

  ``op_index`` int32 [B, num_ops] and ``negate`` bool [B, num_ops]; the ops
  run in sequence, the k-th with column k.
  """
  _check_magnitude(magnitude, num_magnitude_bins)
  images = _check_uint8(_check_batch(images))
  num_ops = op_index.shape[1]
  if num_ops is None:
    raise ValueError("The number of RandAugment ops must be static.")
  for k in range(num_ops):
    images = apply_op_batch(images, op_index[:, k], magnitude, negate[:, k],
                            fill, num_magnitude_bins)
  return images


def rand_augment(image,
                 seed,
                 *,
                 num_ops: int = 1,
                 magnitude: int = 8,
                 num_magnitude_bins: int = 31,
                 fill: float = 0):
  """torchvision ``RandAugment(num_ops, magnitude, num_magnitude_bins, fill=fill)``.

  Args:
    image: uint8 HxWxC (C = 1 or 3), values 0..255 (the PIL image of the
      torchvision recipe).
    seed: shape-[2] int32/int64 stateless seed.
    num_ops: ops applied in sequence (torchvision's default is 2; the seed-004
      recipe uses 1, which is this function's default).
    magnitude: magnitude bin, 0 <= magnitude < num_magnitude_bins.
    num_magnitude_bins: number of magnitude bins.
    fill: scalar fill for geometric ops.

  Each op is drawn uniformly from the 14 ops; signed ops get their magnitude
  negated with probability 1/2. Returns a uint8 image of the same shape.
  """
  _check_magnitude(magnitude, num_magnitude_bins)
  image = _check_uint8(image)
  if num_ops <= 0:
    return image
  op_index, negate = sample_rand_augment(seed, 1, num_ops)
  out = rand_augment_batch(image[None], op_index, negate,
                           magnitude=magnitude,
                           num_magnitude_bins=num_magnitude_bins, fill=fill)
  return tf.ensure_shape(out[0], image.shape)


# ----------------------------------------------------------------------------
# ColorJitter.
# ----------------------------------------------------------------------------


def _jitter_range(value, name, center=1.0, bound=(0.0, float("inf")),
                  clip_first_on_zero=True):
  """torchvision ``ColorJitter._check_input``; None means "not applied"."""
  if isinstance(value, (int, float)):
    if value < 0:
      raise ValueError(f"If {name} is a single number, it must be non negative.")
    lo, hi = center - value, center + value
    if clip_first_on_zero:
      lo = max(lo, 0.0)
  elif isinstance(value, Sequence) and len(value) == 2:
    lo, hi = float(value[0]), float(value[1])
  else:
    raise TypeError(f"{name} should be a single number or a (min, max) pair.")
  if not bound[0] <= lo <= hi <= bound[1]:
    raise ValueError(f"{name} values should be between {bound}, got {(lo, hi)}.")
  if lo == hi == center:
    return None
  return float(lo), float(hi)


def _jitter_ranges(brightness, contrast, saturation, hue):
  return [
      _jitter_range(brightness, "brightness"),
      _jitter_range(contrast, "contrast"),
      _jitter_range(saturation, "saturation"),
      _jitter_range(hue, "hue", center=0.0, bound=(-0.5, 0.5),
                    clip_first_on_zero=False),
  ]


def _gray_float(images: tf.Tensor) -> tf.Tensor:
  """torchvision ``rgb_to_grayscale`` for float tensors ([..., 1])."""
  if _num_channels(images) == 1:
    return images
  weights = tf.constant([0.2989, 0.587, 0.114], images.dtype)
  return tf.reduce_sum(images * weights, axis=-1, keepdims=True)


def _blend_float(images, other, factor):
  """torchvision ``_blend`` for float tensors: clamp(f*img + (1-f)*other, 0, 1)."""
  factor = _per_image(factor, images.dtype)
  return tf.clip_by_value(factor * images + (1.0 - factor) * other, 0.0, 1.0)


def _per_image_hue(images, hue_factors, adjust):
  """``adjust(image, factor)`` image by image (tf.image.adjust_hue takes one delta)."""
  return tf.map_fn(lambda args: adjust(*args), (images, hue_factors),
                   fn_output_signature=tf.TensorSpec(images.shape[1:],
                                                     images.dtype))


def _adjust_hue_float(images, hue_factors):
  if _num_channels(images) == 1:
    return images

  def adjust(image, delta):
    return tf.clip_by_value(tf.image.adjust_hue(image, delta), 0.0, 1.0)

  return _per_image_hue(images, tf.cast(hue_factors, tf.float32), adjust)


def _adjust_hue_u8(images, hue_factors):
  if _num_channels(images) == 1:
    return images

  def adjust(image, delta):
    out = tf.image.adjust_hue(tf.cast(image, tf.float32) / 255.0, delta)
    return _restore_dtype(out * 255.0, tf.uint8)

  return _per_image_hue(images, tf.cast(hue_factors, tf.float32), adjust)


def sample_color_jitter(seed, num, *, brightness=0.1, contrast=0.1,
                        saturation=0.1, hue=0.0) -> tuple[tf.Tensor, tf.Tensor]:
  """ColorJitter's draws for ``num`` images: order int32 and factors float32,
  both [num, 4].

  Each row of ``order`` is a random permutation of (brightness, contrast,
  saturation, hue); ``factors[:, k]`` is transform k's factor, drawn
  uniformly from its range (1.0, ignored, for a disabled transform).
  """
  ranges = _jitter_ranges(brightness, contrast, saturation, hue)
  s_perm, *s_factors = _split(seed, 5)
  order = tf.cast(tf.argsort(tf.random.stateless_uniform([num, 4], s_perm),
                             axis=1), tf.int32)
  factors = [
      tf.ones([num], tf.float32) if r is None else
      tf.random.stateless_uniform([num], s, minval=r[0], maxval=r[1],
                                  dtype=tf.float32)
      for r, s in zip(ranges, s_factors)
  ]
  return order, tf.stack(factors, axis=1)


def color_jitter_batch(images, order, factors, *, brightness=0.1,
                       contrast=0.1, saturation=0.1, hue=0.0) -> tf.Tensor:
  """ColorJitter on a batch with ``sample_color_jitter``'s draws.

  ``order`` int32 [B, 4], ``factors`` float32 [B, 4]; the transform
  arguments (which transforms are enabled) must be the ones sampled with.
  uint8 images get PIL's ops, float images ([0, 1]) torchvision's tensor
  ops; see ``color_jitter``.
  """
  images = _check_batch(images)
  ranges = _jitter_ranges(brightness, contrast, saturation, hue)
  if all(r is None for r in ranges):
    return images
  if images.dtype == tf.uint8:
    ops = [_adjust_brightness_u8, _adjust_contrast_u8, _adjust_color_u8,
           _adjust_hue_u8]
  elif images.dtype.is_floating:
    ops = [
        lambda x, f: tf.clip_by_value(x * _per_image(f, x.dtype), 0.0, 1.0),
        lambda x, f: _blend_float(
            x, tf.reduce_mean(_gray_float(x), axis=[1, 2, 3], keepdims=True),
            f),
        lambda x, f: (x if _num_channels(x) == 1 else _blend_float(
            x, _gray_float(x), f)),
        _adjust_hue_float,
    ]
  else:
    raise TypeError(f"color_jitter expects uint8 or float, got {images.dtype}.")
  branches = []
  for k, (fn, r) in enumerate(zip(ops, ranges)):
    if r is None:
      branches.append(lambda x, f: x)
    else:
      branches.append(lambda x, f, fn=fn, k=k: fn(x, f[:, k]))
  factors = tf.convert_to_tensor(factors)
  for position in range(4):  # Static unrolling: 4 slots of the permutation.
    images = _switch_per_image(order[:, position], branches, images, factors)
  return images


def color_jitter(image,
                 seed,
                 *,
                 brightness=0.1,
                 contrast=0.1,
                 saturation=0.1,
                 hue=0.0):
  """torchvision ``ColorJitter(brightness, contrast, saturation, hue)``.

  Args:
    image: HxWxC, C = 1 or 3. Float images must be in [0, 1] (torchvision's
      float-tensor ops, clamped to [0, 1] after each op); uint8 images
      (0..255) get the PIL ops (ImageEnhance; truncated to uint8 after each
      op), i.e. what torchvision does when ColorJitter precedes ToTensor.
    seed: shape-[2] int32/int64 stateless seed.
    brightness, contrast, saturation: a number b (factor ~ U[max(0, 1 - b),
      1 + b]) or a (min, max) pair; 0 disables the transform.
    hue: a number h (shift ~ U[-h, h], h <= 0.5) or a pair; 0 disables it.

  The four transforms run in a random order (a permutation drawn from the
  seed). Contrast blends with the mean of the grayscale image, saturation
  with the grayscale image. Output dtype = input dtype.
  """
  image = tf.convert_to_tensor(image)
  jitter = dict(brightness=brightness, contrast=contrast,
                saturation=saturation, hue=hue)
  if all(r is None for r in _jitter_ranges(**jitter)):
    return image
  order, factors = sample_color_jitter(seed, 1, **jitter)
  out = color_jitter_batch(image[None], order, factors, **jitter)
  return tf.ensure_shape(out[0], image.shape)


# ----------------------------------------------------------------------------
# RandomErasing, Normalize, ToTensor.
# ----------------------------------------------------------------------------


def _check_erasing_value(value):
  if isinstance(value, str) and value != "random":
    raise ValueError(
        f"value must be a number, a sequence or 'random', got {value!r}.")


def sample_erasing(seed, num, height, width, *, p: float = 0.25,
                   scale: tuple[float, float] = (0.02, 0.33),
                   ratio: tuple[float, float] = (0.3, 3.3)) -> tf.Tensor:
  """RandomErasing's boxes, int32 [num, 4] (top, left, height, width); 0 x 0
  for an image left alone.

  With probability p, 10 candidates are drawn at once (``h = round(sqrt(A
  r))``, ``w = round(sqrt(A / r))``); the first with h < H and w < W is
  erased at a uniform position. If none fits, nothing is erased (as
  torchvision does).
  """
  s_apply, s_box, _ = _split(seed, 3)
  apply = tf.random.stateless_uniform([num], s_apply, dtype=tf.float32) < p
  height = _per_row(tf.cast(height, tf.int32), num)
  width = _per_row(tf.cast(width, tf.int32), num)
  h, w, u = _sample_boxes(s_box, num, height, width, scale, ratio,
                          height_first=True)
  valid = (h < height[:, None]) & (w < width[:, None])
  idx, found = _first_true(valid)
  h, w, u = _pick(h, idx), _pick(w, idx), _pick(u, idx)
  i = _randint(u[:, 0], height - h + 1)
  j = _randint(u[:, 1], width - w + 1)
  erase = apply & found
  return tf.stack([i, j, tf.where(erase, h, 0), tf.where(erase, w, 0)], axis=1)


def erasing_noise(seed, shape, dtype=tf.float32) -> tf.Tensor:
  """The N(0, 1) fill of ``value='random'``: ``shape`` [num, H, W, C]."""
  _, _, s_value = _split(seed, 3)
  return tf.random.stateless_normal(shape, s_value, dtype=dtype)


def erasing_batch(images, boxes, value: float | Sequence[float] | str = 0.0,
                  noise=None) -> tf.Tensor:
  """Fills ``boxes`` [B, 4] (``sample_erasing``'s) of float images with ``value``.

  ``value`` is a scalar, a per-channel sequence, or 'random', which takes
  the fill from ``noise`` (``erasing_noise`` per image, [B, H, W, C]).
  """
  images = _check_batch(images)
  _check_erasing_value(value)
  top, left, height, width = [
      _per_image(v) for v in tf.unstack(tf.cast(boxes, tf.int32), 4, axis=1)]
  shape = tf.shape(images)
  rows = tf.range(shape[1])[None, :, None, None]
  cols = tf.range(shape[2])[None, None, :, None]
  mask = ((rows >= top) & (rows < top + height) & (cols >= left) &
          (cols < left + width))
  if isinstance(value, str):
    if noise is None:
      raise ValueError("value='random' needs the per-image noise.")
    fill = tf.cast(noise, images.dtype)
  else:
    fill = tf.cast(tf.constant(value, tf.float32), images.dtype)
    fill = tf.reshape(fill, [-1])[None, None, None, :]  # scalar or per-channel
  return tf.where(mask, fill, images)


def random_erasing(image,
                   seed,
                   *,
                   p: float = 0.25,
                   scale: tuple[float, float] = (0.02, 0.33),
                   ratio: tuple[float, float] = (0.3, 3.3),
                   value: float | Sequence[float] | str = 0.0):
  """torchvision ``RandomErasing(p, scale, ratio, value)``.

  Args:
    image: float HxWxC in any range (the recipe applies it after Normalize).
    seed: shape-[2] int32/int64 stateless seed.
    p: probability of erasing.
    scale: range of the erased area as a fraction of the image area.
    ratio: range of the box's aspect ratio h/w (log-uniform).
    value: a scalar, a per-channel sequence, or 'random' (N(0, 1) noise).

  The box is ``sample_erasing``'s.
  """
  image = tf.convert_to_tensor(image)
  _check_erasing_value(value)
  shape = tf.shape(image)
  box = sample_erasing(seed, 1, shape[0], shape[1], p=p, scale=scale,
                       ratio=ratio)
  noise = None
  if isinstance(value, str):
    noise = erasing_noise(seed, tf.concat([[1], shape], 0), image.dtype)
  out = erasing_batch(image[None], box, value, noise)[0]
  return tf.ensure_shape(out, image.shape)


def standardize(image, mean: Sequence[float], std: Sequence[float]):
  """torchvision ``Normalize``: (image - mean) / std per channel.

  ``image`` is float HxWxC (typically [0, 1]) or a batch; returns float32.
  """
  image = tf.cast(image, tf.float32)
  mean = tf.constant(mean, tf.float32)
  std = tf.constant(std, tf.float32)
  return (image - mean) / std


def to_float01(image):
  """torchvision ``ToTensor`` scaling: uint8 0..255 -> float32 in [0, 1]."""
  image = tf.convert_to_tensor(image)
  if image.dtype != tf.uint8:
    raise TypeError(f"to_float01 expects uint8, got {image.dtype}.")
  return tf.cast(image, tf.float32) / 255.0
