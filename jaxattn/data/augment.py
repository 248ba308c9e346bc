"""Stateless image augmentations for tf.data, with torchvision's semantics.

Every function takes ONE image laid out HxWxC and returns one. Every random
function takes an explicit ``seed``: a shape-[2] int32/int64 tensor (or a
pair of Python ints). Only ``tf.random.stateless_*`` ops are used, and
sub-seeds are derived with ``tf.random.experimental.stateless_split``, so the
output is a pure function of (image, seed, arguments). The training pipeline
derives one seed per example from (global seed, example index); a resumed run
therefore reproduces the same augmented images whatever the parallelism.
Everything is graph-compatible (usable inside ``tf.data.Dataset.map``); there
are no Python loops over tensors, and the "up to 10 attempts" samplers draw
all 10 candidates at once and keep the first valid one.

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
from collections.abc import Sequence

import tensorflow as tf

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
# Seeds and shared samplers.
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


def _sample_boxes(seed, height, width, scale, ratio, *, height_first: bool):
  """Draws the 10 (h, w, u_i, u_j) candidates of torchvision's samplers.

  Area fraction ~ U(scale), log aspect ~ U(log ratio) (float32 like torch's
  ``uniform_``), then ``int(round(sqrt(...)))`` in float64 like Python's
  ``round`` (half to even). RandomResizedCrop uses w = sqrt(A r),
  h = sqrt(A / r); RandomErasing swaps them (``height_first``).
  """
  s_area, s_ratio, s_pos = _split(seed, 3)
  n = _NUM_ATTEMPTS
  frac = tf.random.stateless_uniform(
      [n], s_area, minval=scale[0], maxval=scale[1], dtype=tf.float32)
  log_r = tf.random.stateless_uniform(
      [n], s_ratio, minval=math.log(ratio[0]), maxval=math.log(ratio[1]),
      dtype=tf.float32)
  aspect = tf.cast(tf.exp(log_r), tf.float64)
  target = tf.cast(height * width, tf.float64) * tf.cast(frac, tf.float64)
  a = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
  b = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
  h, w = (a, b) if height_first else (b, a)
  u = tf.random.stateless_uniform([n, 2], s_pos, dtype=tf.float64)
  return h, w, u


def _first_true(mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """(index of the first True clamped to a valid index, whether any)."""
  n = tf.shape(mask)[0]
  idx = tf.reduce_min(tf.where(mask, tf.range(n), n))
  return tf.minimum(idx, n - 1), idx < n


def _restore_dtype(x: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
  """float32 result -> ``dtype``; integer dtypes are rounded half-up and clipped."""
  if dtype.is_integer:
    x = tf.floor(tf.clip_by_value(x, dtype.min, dtype.max) + 0.5)
    return tf.cast(tf.clip_by_value(x, dtype.min, dtype.max), dtype)
  return tf.cast(x, dtype)


_PIL_PRECISION_BITS = 22  # 32 - 8 - 2, Pillow's Resample.c for 8-bit data.


def _antialias_bilinear_weights(in_size: tf.Tensor, out_size: int) -> tf.Tensor:
  """[out_size, in_size] float64 weights of PIL's ``precompute_coeffs``.

  Triangle filter with support ``max(in/out, 1)``, taps
  [int(center - support + .5), int(center + support + .5)) clipped to the
  image, normalised to sum 1. torch's antialiased bilinear resize uses the
  same weights (it was ported from PIL).
  """
  scale = tf.cast(in_size, tf.float64) / float(out_size)
  filterscale = tf.maximum(scale, 1.0)
  support = filterscale  # bilinear support 1.0 * filterscale
  center = (tf.range(out_size, dtype=tf.float64) + 0.5) * scale
  xmin = tf.maximum(tf.floor(center - support + 0.5), 0.0)  # values >= -.5
  xmax = tf.minimum(tf.floor(center + support + 0.5),
                    tf.cast(in_size, tf.float64))
  x = tf.range(in_size, dtype=tf.float64)[None, :]
  center, xmin, xmax = center[:, None], xmin[:, None], xmax[:, None]
  w = tf.maximum(1.0 - tf.abs((x - center + 0.5) * (1.0 / filterscale)), 0.0)
  w = tf.where((x >= xmin) & (x < xmax), w, 0.0)
  total = tf.reduce_sum(w, axis=1, keepdims=True)
  return tf.math.divide_no_nan(w, total)


def _resize_antialiased(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
  """Antialiased bilinear resize of HxWxC to ``size`` (PIL / torch AA).

  Separable, horizontal pass first. uint8 input follows Pillow's 8-bit path
  exactly (22-bit fixed-point weights, each pass rounded to uint8); other
  dtypes are resampled in float32 without intermediate rounding (torch's
  float path) and returned as float32.
  """
  shape = tf.shape(image)
  kh = _antialias_bilinear_weights(shape[0], size[0])  # [out_h, in_h]
  kw = _antialias_bilinear_weights(shape[1], size[1])  # [out_w, in_w]
  if image.dtype == tf.uint8:
    one = float(1 << _PIL_PRECISION_BITS)
    half = float(1 << (_PIL_PRECISION_BITS - 1))

    def fixed_point_pass(x, k, equation):
      # Integer arithmetic carried exactly by float64 (all values < 2**53).
      acc = tf.einsum(equation, tf.floor(0.5 + k * one), x) + half
      return tf.clip_by_value(tf.floor(acc / one), 0.0, 255.0)

    x = tf.cast(image, tf.float64)
    # Pillow skips a pass whose size does not change; with these weights
    # such a pass is the identity anyway.
    x = fixed_point_pass(x, kw, "ox,yxc->yoc")
    x = fixed_point_pass(x, kh, "oy,yxc->oxc")
    return tf.cast(x, tf.uint8)
  x = tf.cast(image, tf.float32)
  x = tf.einsum("ox,yxc->yoc", tf.cast(kw, tf.float32), x)
  return tf.einsum("oy,yxc->oxc", tf.cast(kh, tf.float32), x)


# ----------------------------------------------------------------------------
# RandomResizedCrop / RandomHorizontalFlip.
# ----------------------------------------------------------------------------


def random_resized_crop(image,
                        seed,
                        *,
                        size: int | tuple[int, int],
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)):
  """torchvision ``RandomResizedCrop(size, scale, ratio, antialias=True)``.

  Args:
    image: HxWxC, any range; uint8 (0..255) or float (e.g. [0, 1]). The
      output has the input's dtype (uint8 results are rounded half-up and
      clipped, like PIL); float outputs are not clipped.
    seed: shape-[2] int32/int64 stateless seed.
    size: output (height, width), or an int for a square output.
    scale: range of the crop's area as a fraction of the image area.
    ratio: range of the crop's aspect ratio w/h (sampled log-uniformly).

  Up to 10 candidates (area fraction ~ U(scale), log-ratio ~ U(log ratio),
  ``w = round(sqrt(A r))``, ``h = round(sqrt(A / r))``) are drawn at once; the
  first with ``0 < w <= W and 0 < h <= H`` is used, its top-left corner
  uniform over valid positions. Otherwise torchvision's fallback: a central
  crop with the aspect ratio clamped to ``ratio``. The crop is resized
  bilinearly with antialiasing.
  """
  if isinstance(size, int):
    size = (size, size)
  size = (int(size[0]), int(size[1]))
  image = tf.convert_to_tensor(image)
  dtype = image.dtype
  shape = tf.shape(image)
  height, width = shape[0], shape[1]

  h, w, u = _sample_boxes(
      seed, height, width, scale, ratio, height_first=False)
  valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  idx, found = _first_true(valid)
  h_s, w_s = h[idx], w[idx]
  i_s = _randint(u[idx, 0], height - h_s + 1)
  j_s = _randint(u[idx, 1], width - w_s + 1)

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

  i = tf.where(found, i_s, i_f)
  j = tf.where(found, j_s, j_f)
  h = tf.where(found, h_s, h_f)
  w = tf.where(found, w_s, w_f)
  crop = tf.slice(image, tf.stack([i, j, 0]), tf.stack([h, w, -1]))
  out = _resize_antialiased(crop, size)
  if out.dtype != dtype:
    out = _restore_dtype(out, dtype)
  return tf.ensure_shape(out, [size[0], size[1], image.shape[-1]])


def random_horizontal_flip(image, seed, p: float = 0.5):
  """torchvision ``RandomHorizontalFlip(p)``: mirror the width axis if u < p.

  Any dtype and range; the output has the input's dtype and range.
  """
  image = tf.convert_to_tensor(image)
  u = tf.random.stateless_uniform([], _as_seed(seed), dtype=tf.float32)
  return tf.where(u < p, tf.reverse(image, axis=[1]), image)


# ----------------------------------------------------------------------------
# uint8 primitives with PIL semantics (used by RandAugment and ColorJitter).
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


def _gray_u8(image: tf.Tensor) -> tf.Tensor:
  """PIL ``convert('L')`` as int32 HxWx1: (19595R + 38470G + 7471B + 2^15) >> 16."""
  x = tf.cast(image, tf.int32)
  if _num_channels(image) == 1:
    return x
  weights = tf.constant([19595, 38470, 7471], tf.int32)
  return tf.bitwise.right_shift(
      tf.reduce_sum(x * weights, axis=-1, keepdims=True) + 32768, 16)


def _blend_u8(degenerate: tf.Tensor, image: tf.Tensor, factor) -> tf.Tensor:
  """PIL ``Image.blend(degenerate, image, factor)`` for uint8 data.

  float32 ``deg + factor * (img - deg)``, clipped to [0, 255] and truncated.
  """
  factor = tf.cast(factor, tf.float32)  # ImagingBlend takes a C float.
  deg = tf.cast(degenerate, tf.float32)
  img = tf.cast(image, tf.float32)
  out = deg + factor * (img - deg)
  return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)


def _adjust_brightness_u8(image, factor):
  """PIL ``ImageEnhance.Brightness(image).enhance(factor)``."""
  return _blend_u8(tf.zeros_like(image), image, factor)


def _adjust_color_u8(image, factor):
  """PIL ``ImageEnhance.Color`` (saturation): blend with the ``L`` image."""
  gray = tf.broadcast_to(_gray_u8(image), tf.shape(image))
  return _blend_u8(gray, image, factor)


def _adjust_contrast_u8(image, factor):
  """PIL ``ImageEnhance.Contrast``: blend with int(mean(L) + 0.5)."""
  mean = tf.reduce_mean(tf.cast(_gray_u8(image), tf.float64))
  degenerate = tf.fill(tf.shape(image), tf.floor(mean + 0.5))
  return _blend_u8(degenerate, image, factor)


def _adjust_sharpness_u8(image, factor):
  """PIL ``ImageEnhance.Sharpness``: blend with ``filter(SMOOTH)``.

  SMOOTH is [[1,1,1],[1,5,1],[1,1,1]] / 13 rounded to nearest; PIL leaves
  the outermost row/column unfiltered (so does torchvision's tensor path).
  """
  x = tf.cast(image, tf.int32)
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  padded = tf.pad(x, [[1, 1], [1, 1], [0, 0]])
  box = tf.add_n([
      padded[dy:dy + height, dx:dx + width]
      for dy in range(3)
      for dx in range(3)
  ])
  total = box + 4 * x
  smooth = (2 * total + 13) // 26  # round(total / 13); never a tie.
  rows = tf.range(height)[:, None, None]
  cols = tf.range(width)[None, :, None]
  interior = (rows > 0) & (rows < height - 1) & (cols > 0) & (cols < width - 1)
  degenerate = tf.where(interior, smooth, x)
  return _blend_u8(degenerate, image, factor)


def _posterize(image, bits):
  """Keep the ``bits`` most significant bits (PIL ``ImageOps.posterize``)."""
  bits = tf.cast(bits, tf.int32)
  mask = 256 - tf.bitwise.left_shift(1, 8 - bits)
  return tf.bitwise.bitwise_and(image, tf.cast(mask, tf.uint8))


def _solarize(image, threshold):
  """Invert pixels >= threshold (PIL ``ImageOps.solarize``)."""
  threshold = tf.cast(threshold, tf.float32)
  return tf.where(tf.cast(image, tf.float32) >= threshold, 255 - image, image)


def _autocontrast(image):
  """PIL ``ImageOps.autocontrast`` (cutoff 0), per channel.

  lut[v] = clip(int(v * scale + offset), 0, 255) with scale = 255 / (hi - lo),
  offset = -lo * scale, in float64 exactly as PIL computes it; channels with
  hi <= lo are left unchanged.
  """
  x = tf.cast(image, tf.float64)
  lo = tf.reduce_min(x, axis=[0, 1])
  hi = tf.reduce_max(x, axis=[0, 1])
  scale = 255.0 / tf.maximum(hi - lo, 1.0)
  offset = -lo * scale
  mapped = tf.clip_by_value(tf.cast(x * scale + offset, tf.int32), 0, 255)
  return tf.where(hi > lo, tf.cast(mapped, tf.uint8), image)


def _equalize(image):
  """PIL ``ImageOps.equalize`` / torchvision ``F.equalize``, per channel.

  Per channel: step = (N - count of the last non-empty bin) // 255; if step is
  0 the channel is unchanged, else lut[i] = min(255, (step // 2 +
  #pixels < i) // step).
  """
  x = tf.cast(image, tf.int32)
  channels = tf.shape(x)[-1]
  offsets = tf.range(channels) * 256
  index = x + offsets  # Flat (channel, value) bin per pixel.
  hist = tf.math.bincount(
      tf.reshape(index, [-1]),
      minlength=256 * channels,
      maxlength=256 * channels,
      dtype=tf.int32)
  hist = tf.reshape(hist, [channels, 256])
  bins = tf.range(256)
  last_bin = tf.reduce_max(tf.where(hist > 0, bins, 0), axis=1)
  last_count = tf.gather(hist, last_bin, batch_dims=1)
  step = (tf.reduce_sum(hist, axis=1) - last_count) // 255
  safe_step = tf.maximum(step, 1)[:, None]
  lut = (step[:, None] // 2 + tf.cumsum(hist, axis=1, exclusive=True))
  lut = tf.minimum(lut // safe_step, 255)
  lut = tf.where(step[:, None] > 0, lut, bins[None, :])
  out = tf.gather(tf.reshape(lut, [-1]), index)
  return tf.cast(out, tf.uint8)


# ----------------------------------------------------------------------------
# Geometric ops (torchvision's PIL path: F.affine / F.rotate).
# ----------------------------------------------------------------------------


def _inverse_affine_matrix(center, angle, translate, scale, shear):
  """Port of ``torchvision.transforms.functional._get_inverse_affine_matrix``.

  Returns [a, b, c, d, e, f]: output point (x, y) samples the input at
  (a x + b y + c, d x + e y + f), all in PIL's continuous coordinates (the
  image spans [0, W] x [0, H], pixel centres at +0.5). Angles in degrees.
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


def _affine_u8(image, matrix, fill=0):
  """PIL ``Image.transform(AFFINE, matrix, NEAREST, fillcolor=fill)``.

  PIL samples input pixel floor(M (x + .5, y + .5)); ImageProjectiveTransformV3
  samples round(M' (x, y)), so M' = M(x + .5, y + .5) - .5 (see deviation 4).
  """
  a, b, c, d, e, f = [tf.cast(v, tf.float64) for v in matrix]
  c = c + 0.5 * a + 0.5 * b - 0.5
  f = f + 0.5 * d + 0.5 * e - 0.5
  zero = tf.constant(0.0, tf.float64)
  transform = tf.cast(tf.stack([a, b, c, d, e, f, zero, zero]), tf.float32)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None],
      transforms=transform[None],
      output_shape=tf.shape(image)[:2],
      fill_value=tf.cast(fill, tf.float32),
      interpolation="NEAREST",
      fill_mode="CONSTANT")[0]
  return tf.ensure_shape(out, image.shape)


def _shear_x(image, magnitude, fill=0):
  """torchvision RandAugment ShearX: F.affine(shear=[deg(atan(m)), 0], center=[0, 0])."""
  shear = tf.atan(tf.cast(magnitude, tf.float64)) * (180.0 / math.pi)
  m = _inverse_affine_matrix([0.0, 0.0], 0.0, [0.0, 0.0], 1.0, [shear, 0.0])
  return _affine_u8(image, m, fill)


def _shear_y(image, magnitude, fill=0):
  """torchvision RandAugment ShearY: F.affine(shear=[0, deg(atan(m))], center=[0, 0])."""
  shear = tf.atan(tf.cast(magnitude, tf.float64)) * (180.0 / math.pi)
  m = _inverse_affine_matrix([0.0, 0.0], 0.0, [0.0, 0.0], 1.0, [0.0, shear])
  return _affine_u8(image, m, fill)


def _image_center(image):
  shape = tf.cast(tf.shape(image), tf.float64)
  return [shape[1] * 0.5, shape[0] * 0.5]


def _translate(image, dx, dy, fill=0):
  """F.affine(translate=[int(dx), int(dy)]): content moves right/down by +dx/+dy."""
  dx = tf.cast(tf.cast(dx, tf.int32), tf.float64)  # int(): toward zero.
  dy = tf.cast(tf.cast(dy, tf.int32), tf.float64)
  m = _inverse_affine_matrix(
      _image_center(image), 0.0, [dx, dy], 1.0, [0.0, 0.0])
  return _affine_u8(image, m, fill)


def _rotate(image, degrees, fill=0):
  """F.rotate(degrees) on PIL: counter-clockwise about the image centre (W/2, H/2)."""
  m = _inverse_affine_matrix(
      _image_center(image), -tf.cast(degrees, tf.float64), [0.0, 0.0], 1.0,
      [0.0, 0.0])
  return _affine_u8(image, m, fill)


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


def _apply_op(image,
              op_index,
              magnitude,
              negate=False,
              fill=0,
              num_magnitude_bins: int = 31):
  """Applies RandAugment op ``op_index`` (see ``RAND_AUGMENT_OPS``).

  Args:
    image: uint8 HxWxC (C = 1 or 3), values 0..255.
    op_index: Python int or int32 scalar tensor in [0, 14).
    magnitude: magnitude BIN in [0, num_magnitude_bins) (int or tensor); the
      op's value is torchvision's table entry for that bin.
    negate: bool (or bool tensor): use -magnitude; ignored by unsigned ops.
    fill: scalar fill value for pixels that geometric ops move in.
    num_magnitude_bins: number of bins (torchvision default 31).

  Returns:
    uint8 image of the same shape.
  """
  image = _check_uint8(image)
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  sign = tf.where(tf.cast(negate, tf.bool), -1.0, 1.0)

  def value(name):
    v = _op_magnitude(name, magnitude, num_magnitude_bins, height, width)
    return sign * v if name in _SIGNED_OPS else v

  def factor(name):
    # torchvision passes 1.0 + magnitude (Python double) on to PIL.
    return 1.0 + tf.cast(value(name), tf.float64)

  branches = [
      lambda: image,
      lambda: _shear_x(image, value("ShearX"), fill),
      lambda: _shear_y(image, value("ShearY"), fill),
      lambda: _translate(image, value("TranslateX"), 0.0, fill),
      lambda: _translate(image, 0.0, value("TranslateY"), fill),
      lambda: _rotate(image, value("Rotate"), fill),
      lambda: _adjust_brightness_u8(image, factor("Brightness")),
      lambda: _adjust_color_u8(image, factor("Color")),
      lambda: _adjust_contrast_u8(image, factor("Contrast")),
      lambda: _adjust_sharpness_u8(image, factor("Sharpness")),
      lambda: _posterize(image, value("Posterize")),
      lambda: _solarize(image, value("Solarize")),
      lambda: _autocontrast(image),
      lambda: _equalize(image),
  ]
  if isinstance(op_index, int):
    out = branches[op_index]()
  else:
    out = tf.switch_case(tf.cast(op_index, tf.int32), branches)
  return tf.ensure_shape(out, image.shape)


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
  if not 0 <= magnitude < num_magnitude_bins:
    raise ValueError(
        f"magnitude must be in [0, {num_magnitude_bins}), got {magnitude}.")
  image = _check_uint8(image)
  if num_ops <= 0:
    return image
  seeds = _split(seed, 2 * num_ops)
  for k in range(num_ops):  # Static unrolling over a Python int.
    op_index = tf.random.stateless_uniform(
        [], seeds[2 * k], minval=0, maxval=len(RAND_AUGMENT_OPS),
        dtype=tf.int32)
    negate = tf.random.stateless_uniform(
        [], seeds[2 * k + 1], minval=0, maxval=2, dtype=tf.int32) > 0
    image = _apply_op(image, op_index, magnitude, negate, fill,
                      num_magnitude_bins)
  return image


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


def _gray_float(image: tf.Tensor) -> tf.Tensor:
  """torchvision ``rgb_to_grayscale`` for float tensors (HxWx1)."""
  if _num_channels(image) == 1:
    return image
  weights = tf.constant([0.2989, 0.587, 0.114], image.dtype)
  return tf.reduce_sum(image * weights, axis=-1, keepdims=True)


def _blend_float(image, other, factor):
  """torchvision ``_blend`` for float tensors: clamp(f*img + (1-f)*other, 0, 1)."""
  factor = tf.cast(factor, image.dtype)
  return tf.clip_by_value(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def _adjust_hue_float(image, hue_factor):
  if _num_channels(image) == 1:
    return image
  out = tf.image.adjust_hue(image, tf.cast(hue_factor, tf.float32))
  return tf.clip_by_value(out, 0.0, 1.0)


def _adjust_hue_u8(image, hue_factor):
  if _num_channels(image) == 1:
    return image
  out = tf.image.adjust_hue(tf.cast(image, tf.float32) / 255.0,
                            tf.cast(hue_factor, tf.float32))
  return _restore_dtype(out * 255.0, tf.uint8)


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
  ranges = [
      _jitter_range(brightness, "brightness"),
      _jitter_range(contrast, "contrast"),
      _jitter_range(saturation, "saturation"),
      _jitter_range(hue, "hue", center=0.0, bound=(-0.5, 0.5),
                    clip_first_on_zero=False),
  ]
  if all(r is None for r in ranges):
    return image
  s_perm, *s_factors = _split(seed, 5)
  order = tf.argsort(tf.random.stateless_uniform([4], s_perm))
  factors = [
      None if r is None else tf.random.stateless_uniform(
          [], s, minval=r[0], maxval=r[1], dtype=tf.float32)
      for r, s in zip(ranges, s_factors)
  ]

  if image.dtype == tf.uint8:
    ops = [_adjust_brightness_u8, _adjust_contrast_u8, _adjust_color_u8,
           _adjust_hue_u8]
  elif image.dtype.is_floating:
    ops = [
        lambda x, f: tf.clip_by_value(x * tf.cast(f, x.dtype), 0.0, 1.0),
        lambda x, f: _blend_float(x, tf.reduce_mean(_gray_float(x)), f),
        lambda x, f: (x if _num_channels(x) == 1 else _blend_float(
            x, _gray_float(x), f)),
        _adjust_hue_float,
    ]
  else:
    raise TypeError(f"color_jitter expects uint8 or float, got {image.dtype}.")

  for k in range(4):  # Static unrolling: 4 positions of the permutation.
    branches = []
    for fn, f in zip(ops, factors):
      if f is None:
        branches.append(lambda x=image: x)
      else:
        branches.append(lambda x=image, fn=fn, f=f: fn(x, f))
    image = tf.ensure_shape(tf.switch_case(order[k], branches), image.shape)
  return image


# ----------------------------------------------------------------------------
# RandomErasing, Normalize, ToTensor.
# ----------------------------------------------------------------------------


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

  With probability p, 10 candidates are drawn at once (``h = round(sqrt(A
  r))``, ``w = round(sqrt(A / r))``); the first with h < H and w < W is
  filled with ``value`` at a uniform position. If none fits, the image is
  returned unchanged (as torchvision does).
  """
  image = tf.convert_to_tensor(image)
  if isinstance(value, str) and value != "random":
    raise ValueError(f"value must be a number, a sequence or 'random', got {value!r}.")
  s_apply, s_box, s_value = _split(seed, 3)
  apply = tf.random.stateless_uniform([], s_apply, dtype=tf.float32) < p

  def erase():
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    h, w, u = _sample_boxes(seed=s_box, height=height, width=width,
                            scale=scale, ratio=ratio, height_first=True)
    valid = (h < height) & (w < width)
    idx, found = _first_true(valid)
    h, w = h[idx], w[idx]
    i = _randint(u[idx, 0], height - h + 1)
    j = _randint(u[idx, 1], width - w + 1)
    rows = tf.range(height)[:, None, None]
    cols = tf.range(width)[None, :, None]
    mask = (rows >= i) & (rows < i + h) & (cols >= j) & (cols < j + w)
    mask = mask & found
    if isinstance(value, str):
      fill = tf.random.stateless_normal(shape, s_value, dtype=image.dtype)
    else:
      fill = tf.cast(tf.constant(value, tf.float32), image.dtype)
      fill = tf.reshape(fill, [-1])[None, None, :]  # scalar or per-channel
    return tf.where(mask, fill, image)

  # Only a fraction p of the images is erased: the others skip the box
  # sampling (a tf.data map runs this per image, and its ops add up). The
  # draws are stateless, so erased images are the same either way.
  return tf.ensure_shape(tf.cond(apply, erase, lambda: image), image.shape)


def normalize(image, mean: Sequence[float], std: Sequence[float]):
  """torchvision ``Normalize``: (image - mean) / std per channel.

  ``image`` is float HxWxC (typically [0, 1]); returns float32.
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
