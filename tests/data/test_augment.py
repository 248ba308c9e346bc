"""Tests for jaxattn.data.augment (stateless torchvision-style augmentations).

Where Pillow is installed, the uint8 ops are also checked bit-exactly against
the PIL calls torchvision makes (seed 004 ran RandAugment/RandomResizedCrop on
PIL images); those tests are skipped without Pillow.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from jaxattn.data import augment as A

_OPS = {name: i for i, name in enumerate(A.RAND_AUGMENT_OPS)}
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2471, 0.2435, 0.2616)


def _rand_u8(shape, seed=0, lo=0, hi=256):
  return np.random.default_rng(seed).integers(lo, hi, shape, dtype=np.uint8)


def _seed(a, b=0):
  return tf.constant([a, b], tf.int64)


def _map_over_seeds(fn, n, base=(7, 11)):
  """fn(seed) for n derived seeds, run inside tf.data (fast, graph mode)."""
  base = tf.constant(base, tf.int64)
  ds = tf.data.Dataset.range(n).map(
      lambda i: fn(tf.random.experimental.stateless_fold_in(base, i)),
      num_parallel_calls=tf.data.AUTOTUNE)
  return np.stack(list(ds.as_numpy_iterator()))


# Random ops with default-ish arguments, each taking (image_uint8, seed).
_RANDOM_OPS = {
    "random_resized_crop":
        lambda im, s: A.random_resized_crop(im, s, size=(32, 32)),
    "random_horizontal_flip":
        A.random_horizontal_flip,
    "rand_augment":
        lambda im, s: A.rand_augment(im, s, num_ops=2),
    "color_jitter_float":
        lambda im, s: A.color_jitter(A.to_float01(im), s, hue=0.1),
    "color_jitter_uint8":
        lambda im, s: A.color_jitter(im, s),
    "random_erasing":
        lambda im, s: A.random_erasing(A.to_float01(im), s, p=0.5),
}


# ----------------------------------------------------------------------------
# Seeds, determinism, shapes and dtypes.
# ----------------------------------------------------------------------------


def test_seed_must_be_a_pair_of_ints():
  img = _rand_u8((8, 8, 3))
  with pytest.raises(ValueError):
    A.random_horizontal_flip(img, tf.constant([1, 2, 3]))
  with pytest.raises(TypeError):
    A.random_horizontal_flip(img, tf.constant([1.0, 2.0]))
  # A Python pair and an int32 tensor are accepted.
  A.random_horizontal_flip(img, (1, 2))
  A.random_horizontal_flip(img, tf.constant([1, 2], tf.int32))


@pytest.mark.parametrize("name", sorted(_RANDOM_OPS))
def test_deterministic_given_seed_and_seed_sensitive(name):
  fn = _RANDOM_OPS[name]
  img = _rand_u8((32, 32, 3), seed=1)
  a = fn(img, _seed(5)).numpy()
  b = fn(img, _seed(5)).numpy()
  np.testing.assert_array_equal(a, b)
  # Some ops can coincide for two seeds (identity op, no flip, no erase):
  # among several seeds at least two outputs must differ.
  outs = [fn(img, _seed(k, 3)).numpy() for k in range(6)]
  assert any(not np.array_equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("name", sorted(_RANDOM_OPS))
def test_shapes_and_dtypes(name):
  fn = _RANDOM_OPS[name]
  img = _rand_u8((32, 32, 3), seed=2)
  out = fn(img, _seed(1))
  assert out.shape == (32, 32, 3)
  expected = {
      "random_resized_crop": tf.uint8,
      "random_horizontal_flip": tf.uint8,
      "rand_augment": tf.uint8,
      "color_jitter_uint8": tf.uint8,
  }.get(name, tf.float32)
  assert out.dtype == expected


def test_to_float01_and_standardize():
  img = np.array([[[0, 51, 255]]], np.uint8)
  x = A.to_float01(img)
  assert x.dtype == tf.float32
  np.testing.assert_allclose(x.numpy(), [[[0.0, 0.2, 1.0]]], atol=1e-7)
  y = A.standardize(x, _CIFAR_MEAN, _CIFAR_STD).numpy()
  expected = (np.array([0.0, 0.2, 1.0]) - _CIFAR_MEAN) / np.array(_CIFAR_STD)
  np.testing.assert_allclose(y[0, 0], expected, rtol=1e-6)
  with pytest.raises(TypeError):
    A.to_float01(x)


# ----------------------------------------------------------------------------
# RandomResizedCrop.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_rrc_full_image_is_plain_resize(dtype):
  img = _rand_u8((24, 24, 3), seed=3).astype(dtype)
  out = A.random_resized_crop(
      img, _seed(9), size=(32, 32), scale=(1.0, 1.0), ratio=(1.0, 1.0))
  assert out.dtype == tf.as_dtype(dtype)
  expected = A._resize_antialiased(tf.constant(img), (32, 32))
  np.testing.assert_array_equal(out.numpy(), expected.numpy())
  # Same as TF's antialiased bilinear resize up to rounding (uint8: PIL
  # rounds after each of its two passes, so up to one grey level).
  ref = tf.image.resize(img.astype(np.float32), (32, 32), antialias=True)
  np.testing.assert_allclose(
      out.numpy().astype(np.float32), ref.numpy(),
      atol=1.0 if dtype == np.uint8 else 1e-3)


def test_rrc_same_size_is_identity():
  img = _rand_u8((32, 32, 3), seed=4)
  out = A.random_resized_crop(
      img, _seed(1), size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0))
  np.testing.assert_array_equal(out.numpy(), img)


def test_rrc_crops_are_exact_windows_at_varying_positions():
  # Crops of exactly 16x16 resized to 16x16: every output is a window.
  img = np.arange(32 * 32 * 1, dtype=np.float32).reshape(32, 32, 1)
  outs = _map_over_seeds(
      lambda s: A.random_resized_crop(
          img, s, size=(16, 16), scale=(0.25, 0.25), ratio=(1.0, 1.0)), 64)
  corners = set()
  for out in outs:
    i, j = divmod(int(out[0, 0, 0]), 32)
    np.testing.assert_array_equal(out, img[i:i + 16, j:j + 16])
    corners.add((i, j))
  assert len(corners) > 30  # 17*17 possible positions.


def test_rrc_fallback_is_central_crop_clamped_to_ratio():
  # 16x32 image, square crops of the whole area never fit: torchvision falls
  # back to the central crop with the ratio clamped to 1 -> columns 8..24.
  img = _rand_u8((16, 32, 3), seed=5)
  out = A.random_resized_crop(
      img, _seed(2), size=(16, 16), scale=(1.0, 1.0), ratio=(1.0, 1.0))
  np.testing.assert_array_equal(out.numpy(), img[:, 8:24])


def test_rrc_area_and_ratio_follow_the_sampler():
  h, w, _ = A._sample_boxes(_seed(3), 50, 320, 320, (0.08, 1.0),
                            (0.75, 4 / 3), height_first=False)
  assert h.shape == w.shape == (50, 10)
  area = (h * w).numpy() / (320 * 320)
  ratio = (w / h).numpy()
  assert np.all(area > 0.07) and np.all(area < 1.01)
  assert np.all(ratio > 0.74) and np.all(ratio < 1.35)


def test_rrc_matches_pil_resize():
  Image = pytest.importorskip("PIL.Image")
  rng = np.random.default_rng(6)
  for h, w in [(24, 24), (28, 30), (17, 9), (32, 32), (5, 29)]:
    crop = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(crop).resize((32, 32), Image.BILINEAR))
    out = A._resize_antialiased(tf.constant(crop), (32, 32)).numpy()
    np.testing.assert_array_equal(out, ref)


# ----------------------------------------------------------------------------
# RandomHorizontalFlip.
# ----------------------------------------------------------------------------


def test_flip_frequency_and_content():
  img = _rand_u8((4, 6, 3), seed=7)
  for p, lo, hi in [(0.5, 0.42, 0.58), (0.2, 0.14, 0.26), (0.0, 0, 0),
                    (1.0, 1, 1)]:
    outs = _map_over_seeds(lambda s: A.random_horizontal_flip(img, s, p=p), 600)
    flipped = np.array([np.array_equal(o, img[:, ::-1]) for o in outs])
    kept = np.array([np.array_equal(o, img) for o in outs])
    assert np.all(flipped ^ kept)
    assert lo <= flipped.mean() <= hi, (p, flipped.mean())


# ----------------------------------------------------------------------------
# RandAugment.
# ----------------------------------------------------------------------------


def test_rand_augment_range_shape_and_variety():
  img = _rand_u8((32, 32, 3), seed=8)
  outs = _map_over_seeds(lambda s: A.rand_augment(img, s), 120)
  assert outs.dtype == np.uint8 and outs.shape == (120, 32, 32, 3)
  distinct = {o.tobytes() for o in outs}
  assert len(distinct) > 15  # 14 ops, 9 of them with two signs.
  # The identity op is drawn about 1/14 of the time.
  same = np.mean([np.array_equal(o, img) for o in outs])
  assert 0.0 < same < 0.25
  with pytest.raises(ValueError):
    A.rand_augment(img, _seed(0), magnitude=31)
  with pytest.raises(TypeError):
    A.rand_augment(img.astype(np.float32), _seed(0))


@pytest.mark.parametrize("op", A.RAND_AUGMENT_OPS)
def test_each_op_keeps_shape_and_dtype_and_switch_case_agrees(op):
  img = _rand_u8((20, 28, 3), seed=9)
  direct = A._apply_op(img, _OPS[op], 8, True)
  switched = A._apply_op(img, tf.constant(_OPS[op]), 8, tf.constant(True))
  assert direct.dtype == tf.uint8 and direct.shape == img.shape
  np.testing.assert_array_equal(direct.numpy(), switched.numpy())


@pytest.mark.parametrize("op", [
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
    "Brightness", "Color", "Contrast", "Sharpness", "Posterize", "Solarize"
])
def test_magnitude_bin_zero_is_identity(op):
  # Bin 0: shear/translate/rotate by 0, enhancement factor 1, posterize to 8
  # bits, solarize threshold 255 (only 255 -> 0 would change; avoid it).
  img = _rand_u8((16, 16, 3), seed=10, hi=255)
  for negate in (False, True):
    out = A._apply_op(img, _OPS[op], 0, negate)
    np.testing.assert_array_equal(out.numpy(), img)


def test_posterize_bits():
  img = _rand_u8((16, 16, 3), seed=11)
  bits = A._op_magnitude("Posterize", 30, 31, 16, 16).numpy()
  assert bits == 4
  out = A._apply_op(img, _OPS["Posterize"], 30).numpy()
  np.testing.assert_array_equal(out, img & 0xF0)
  assert A._op_magnitude("Posterize", 8, 31, 16, 16).numpy() == 7


def test_solarize_threshold():
  img = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
  threshold = A._op_magnitude("Solarize", 8, 31, 16, 16).numpy()
  assert threshold == 187.0
  out = A._apply_op(img, _OPS["Solarize"], 8).numpy()
  v = img.astype(int)
  np.testing.assert_array_equal(out, np.where(v >= 187, 255 - v, v))


def test_equalize_uses_full_range_on_low_contrast_image():
  img = _rand_u8((32, 32, 3), seed=12, lo=100, hi=120)
  out = A._apply_op(img, _OPS["Equalize"], 8).numpy()
  for c in range(3):
    assert out[..., c].min() <= 20 and out[..., c].max() == 255
    # Monotone mapping: the order of pixel values is preserved.
    order = np.argsort(img[..., c].ravel(), kind="stable")
    assert np.all(np.diff(out[..., c].ravel()[order].astype(int)) >= 0)
  # A constant channel is left unchanged.
  flat = np.full((8, 8, 1), 77, np.uint8)
  np.testing.assert_array_equal(A._equalize(flat[None])[0].numpy(), flat)


def test_autocontrast_stretches_each_channel():
  img = _rand_u8((16, 16, 3), seed=13, lo=50, hi=90)
  out = A._apply_op(img, _OPS["AutoContrast"], 8).numpy()
  assert np.all(out.min(axis=(0, 1)) == 0) and np.all(out.max(axis=(0, 1)) == 255)


def test_geometric_ops_conventions():
  # The primitives work on batches [B, H, W, C]; here a batch of one.
  img = _rand_u8((12, 12, 3), seed=14, lo=1)  # no zeros: fill is visible
  # Rotate by 90 degrees is counter-clockwise (PIL / torchvision).
  np.testing.assert_array_equal(A._rotate(img[None], 90.0)[0].numpy(), np.rot90(img))
  np.testing.assert_array_equal(A._rotate(img[None], 0.0)[0].numpy(), img)
  # TranslateX: int(150/331*12 * 8/30) = 1 pixel; +: content moves right.
  right = A._apply_op(img, _OPS["TranslateX"], 8, False).numpy()
  np.testing.assert_array_equal(right[:, 1:], img[:, :-1])
  assert np.all(right[:, 0] == 0)
  down = A._translate(img[None], 0.0, -3.9, fill=7)[0].numpy()  # int(-3.9) = -3: up
  np.testing.assert_array_equal(down[:-3], img[3:])
  assert np.all(down[-3:] == 7)
  # ShearX about the top-left corner: row 0 barely moves, lower rows shift.
  sheared = A._shear_x(img[None], 0.3)[0].numpy()
  np.testing.assert_array_equal(sheared[0, :-1], img[0, :-1])
  assert not np.array_equal(sheared[-1], img[-1])


def test_color_on_gray_image_and_sharpness_border():
  gray = np.repeat(_rand_u8((16, 16, 1), seed=15), 3, axis=-1)
  out = A._apply_op(gray, _OPS["Color"], 30, True).numpy()
  np.testing.assert_array_equal(out, gray)
  img = _rand_u8((16, 16, 3), seed=16)
  sharp = A._apply_op(img, _OPS["Sharpness"], 30, True).numpy()
  np.testing.assert_array_equal(sharp[0], img[0])
  np.testing.assert_array_equal(sharp[:, -1], img[:, -1])
  assert not np.array_equal(sharp[1:-1, 1:-1], img[1:-1, 1:-1])


def _inverse_affine_py(center, angle, translate, scale, shear):
  # torchvision.transforms.functional._get_inverse_affine_matrix.
  rot = math.radians(angle)
  sx, sy = math.radians(shear[0]), math.radians(shear[1])
  cx, cy = center
  tx, ty = translate
  a = math.cos(rot - sy) / math.cos(sy)
  b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
  c = math.sin(rot - sy) / math.cos(sy)
  d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
  m = [x / scale for x in [d, -b, 0.0, -c, a, 0.0]]
  m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty) + cx
  m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty) + cy
  return m


def _pil_op(img, op, mag):
  """What torchvision's RandAugment does to a PIL image (F_pil calls)."""
  from PIL import Image, ImageEnhance, ImageOps
  pil = Image.fromarray(img)
  w, h = pil.size

  def affine(**kw):
    return pil.transform(pil.size, Image.AFFINE, _inverse_affine_py(**kw),
                         Image.NEAREST, fillcolor=(0, 0, 0))

  deg = math.degrees(math.atan(mag)) if op.startswith("Shear") else 0.0
  out = {
      "Identity": lambda: pil,
      "ShearX": lambda: affine(center=[0, 0], angle=0.0, translate=[0, 0],
                               scale=1.0, shear=[deg, 0.0]),
      "ShearY": lambda: affine(center=[0, 0], angle=0.0, translate=[0, 0],
                               scale=1.0, shear=[0.0, deg]),
      "TranslateX": lambda: affine(center=[w * .5, h * .5], angle=0.0,
                                   translate=[int(mag), 0], scale=1.0,
                                   shear=[0.0, 0.0]),
      "TranslateY": lambda: affine(center=[w * .5, h * .5], angle=0.0,
                                   translate=[0, int(mag)], scale=1.0,
                                   shear=[0.0, 0.0]),
      "Rotate": lambda: pil.rotate(mag, Image.NEAREST, fillcolor=(0, 0, 0)),
      "Brightness": lambda: ImageEnhance.Brightness(pil).enhance(1.0 + mag),
      "Color": lambda: ImageEnhance.Color(pil).enhance(1.0 + mag),
      "Contrast": lambda: ImageEnhance.Contrast(pil).enhance(1.0 + mag),
      "Sharpness": lambda: ImageEnhance.Sharpness(pil).enhance(1.0 + mag),
      "Posterize": lambda: ImageOps.posterize(pil, int(mag)),
      "Solarize": lambda: ImageOps.solarize(pil, mag),
      "AutoContrast": lambda: ImageOps.autocontrast(pil),
      "Equalize": lambda: ImageOps.equalize(pil),
  }[op]()
  return np.asarray(out)


def _torch_magnitude(op, bin_, h, w, n=31):
  lin = lambda end, start=0.0: float(np.linspace(start, end, n, dtype=np.float32)[bin_])
  return {
      "ShearX": lin(0.3), "ShearY": lin(0.3),
      "TranslateX": lin(150.0 / 331.0 * w), "TranslateY": lin(150.0 / 331.0 * h),
      "Rotate": lin(30.0), "Brightness": lin(0.9), "Color": lin(0.9),
      "Contrast": lin(0.9), "Sharpness": lin(0.9),
      "Posterize": float(8 - np.round(np.arange(n) / ((n - 1) / 4))[bin_]),
      "Solarize": lin(0.0, 255.0),
  }.get(op, 0.0)


@pytest.mark.parametrize("op", A.RAND_AUGMENT_OPS)
def test_ops_match_pil_bit_exactly(op):
  pytest.importorskip("PIL")
  images = [_rand_u8((32, 32, 3), seed=17), _rand_u8((17, 23, 3), seed=18, lo=60, hi=130)]
  for img in images:
    h, w = img.shape[:2]
    for bin_ in (3, 8, 30):
      for negate in (False, True):
        mag = _torch_magnitude(op, bin_, h, w)
        if negate and op in A._SIGNED_OPS:
          mag = -mag
        out = A._apply_op(img, _OPS[op], bin_, negate).numpy()
        np.testing.assert_array_equal(out, _pil_op(img, op, mag),
                                      err_msg=f"{op} bin={bin_} negate={negate}")


# ----------------------------------------------------------------------------
# ColorJitter.
# ----------------------------------------------------------------------------


def test_color_jitter_zero_factors_is_identity():
  img = _rand_u8((16, 16, 3), seed=19)
  x = A.to_float01(img)
  zero = dict(brightness=0, contrast=0, saturation=0, hue=0)
  np.testing.assert_array_equal(A.color_jitter(x, _seed(1), **zero).numpy(), x.numpy())
  np.testing.assert_array_equal(A.color_jitter(img, _seed(1), **zero).numpy(), img)
  # Factors pinned to 1 also give the identity through all four branches.
  one = dict(brightness=(1, 1), contrast=(1, 1), saturation=(1, 1), hue=(0, 0))
  np.testing.assert_allclose(
      A.color_jitter(x, _seed(2), **one).numpy(), x.numpy(), atol=1e-6)


def test_color_jitter_float_ops():
  x = A.to_float01(_rand_u8((16, 16, 3), seed=20)).numpy()
  gray = x @ np.array([0.2989, 0.587, 0.114], np.float32)
  none = dict(brightness=0, contrast=0, saturation=0)
  out = A.color_jitter(x, _seed(3), **{**none, "brightness": (1.7, 1.7)})
  np.testing.assert_allclose(out.numpy(), np.clip(1.7 * x, 0, 1), atol=1e-6)
  out = A.color_jitter(x, _seed(3), **{**none, "contrast": (0.4, 0.4)})
  np.testing.assert_allclose(
      out.numpy(), np.clip(0.4 * x + 0.6 * gray.mean(), 0, 1), atol=1e-6)
  out = A.color_jitter(x, _seed(3), **{**none, "saturation": (0.0, 0.0)})
  np.testing.assert_allclose(out.numpy(), np.repeat(gray[..., None], 3, -1), atol=1e-6)
  out = A.color_jitter(x, _seed(3), **{**none, "hue": 0.5})
  assert out.numpy().min() >= 0 and out.numpy().max() <= 1


def test_color_jitter_factor_range_and_random_order():
  x = A.to_float01(_rand_u8((8, 8, 3), seed=21, lo=40, hi=120)).numpy()
  # Brightness only: the factor is out/in, uniform in [0.9, 1.1].
  outs = _map_over_seeds(
      lambda s: A.color_jitter(x, s, brightness=0.1, contrast=0, saturation=0), 200)
  factors = (outs / x).reshape(200, -1).mean(axis=1)
  assert factors.min() >= 0.9 - 1e-5 and factors.max() <= 1.1 + 1e-5
  assert factors.min() < 0.92 and factors.max() > 1.08
  # contrast -> constant grey; brightness x2 before or after it differs.
  outs = _map_over_seeds(
      lambda s: A.color_jitter(x, s, brightness=(2, 2), contrast=(0, 0), saturation=0), 40)
  gray_mean = (x @ np.array([0.2989, 0.587, 0.114])).mean()
  contrast_first = np.clip(2 * gray_mean, 0, 1)
  bright_first = (np.clip(2 * x, 0, 1) @ np.array([0.2989, 0.587, 0.114])).mean()
  first = np.isclose(outs[:, 0, 0, 0], contrast_first, atol=1e-5)
  second = np.isclose(outs[:, 0, 0, 0], bright_first, atol=1e-5)
  assert np.all(first | second) and first.any() and second.any()


def test_color_jitter_uint8_matches_pil_enhance():
  ImageEnhance = pytest.importorskip("PIL.ImageEnhance")
  from PIL import Image
  img = _rand_u8((16, 16, 3), seed=22)
  none = dict(brightness=0, contrast=0, saturation=0)
  for name, enhancer in [("brightness", ImageEnhance.Brightness),
                         ("contrast", ImageEnhance.Contrast),
                         ("saturation", ImageEnhance.Color)]:
    out = A.color_jitter(img, _seed(4), **{**none, name: (1.37, 1.37)}).numpy()
    ref = np.asarray(enhancer(Image.fromarray(img)).enhance(np.float32(1.37)))
    np.testing.assert_array_equal(out, ref, err_msg=name)


# ----------------------------------------------------------------------------
# RandomErasing.
# ----------------------------------------------------------------------------


def test_random_erasing_p0_is_identity():
  x = A.to_float01(_rand_u8((16, 16, 3), seed=23))
  for k in range(5):
    np.testing.assert_array_equal(A.random_erasing(x, _seed(k), p=0.0).numpy(), x.numpy())


def test_random_erasing_p1_erases_a_rectangle_within_scale():
  x = np.ones((32, 32, 3), np.float32)
  scale = (0.02, 0.33)
  outs = _map_over_seeds(lambda s: A.random_erasing(x, s, p=1.0, scale=scale), 200)
  erased_count = 0
  for out in outs:
    mask = np.all(out == 0.0, axis=-1)
    assert np.all((out == 0.0) | (out == 1.0))
    if not mask.any():
      continue  # all 10 attempts failed (rare; torchvision then returns the input)
    erased_count += 1
    rows, cols = np.where(mask.any(axis=1))[0], np.where(mask.any(axis=0))[0]
    h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    assert mask.sum() == h * w  # a full rectangle
    assert h < 32 and w < 32
    # round() of each side can move the area slightly outside `scale`.
    frac = h * w / (32 * 32)
    assert scale[0] * 0.8 <= frac <= scale[1] * 1.15, (h, w)
  assert erased_count >= 190


def test_random_erasing_probability_and_values():
  x = np.ones((16, 16, 3), np.float32)
  outs = _map_over_seeds(lambda s: A.random_erasing(x, s, p=0.25), 400)
  erased = np.mean([np.any(o != 1.0) for o in outs])
  assert 0.18 <= erased <= 0.32
  out = A.random_erasing(x, _seed(1), p=1.0, value=(2.0, 3.0, 4.0)).numpy()
  mask = np.any(out != 1.0, axis=-1)
  np.testing.assert_array_equal(out[mask], np.tile([2.0, 3.0, 4.0], (mask.sum(), 1)))
  out = A.random_erasing(x, _seed(1), p=1.0, value="random").numpy()
  assert np.array_equal(np.any(out != 1.0, axis=-1), mask)  # same box, same seed
  with pytest.raises(ValueError):
    A.random_erasing(x, _seed(1), value="noise")


# ----------------------------------------------------------------------------
# The seed-004 recipe inside tf.data.
# ----------------------------------------------------------------------------


def _recipe(index, image):
  seed = tf.random.experimental.stateless_fold_in(tf.constant([0, 42], tf.int64), index)
  seeds = tf.random.experimental.stateless_split(seed, 5)
  image = A.random_resized_crop(image, seeds[0], size=(32, 32), scale=(0.75, 1.0),
                                ratio=(1.0, 1.0))
  image = A.random_horizontal_flip(image, seeds[1])
  image = A.rand_augment(image, seeds[2], num_ops=1, magnitude=8)
  image = A.color_jitter(image, seeds[3], brightness=0.1, contrast=0.1, saturation=0.1)
  image = A.standardize(A.to_float01(image), _CIFAR_MEAN, _CIFAR_STD)
  return A.random_erasing(image, seeds[4], p=0.25)


def test_pipeline_in_tf_data_is_deterministic_and_matches_eager():
  images = _rand_u8((48, 32, 32, 3), seed=24)

  def run(parallel, deterministic=None):
    ds = tf.data.Dataset.from_tensor_slices(images).enumerate()
    ds = ds.map(_recipe, num_parallel_calls=parallel, deterministic=deterministic)
    return list(ds.as_numpy_iterator())

  serial = np.stack(run(None))
  parallel = np.stack(run(tf.data.AUTOTUNE))
  np.testing.assert_array_equal(serial, parallel)
  # Even with non-deterministic ORDER, each element is a function of its index.
  unordered = run(4, deterministic=False)
  assert {o.tobytes() for o in unordered} == {o.tobytes() for o in serial}
  # A resumed run (skip the first 40 indices) reproduces the same images.
  resumed = tf.data.Dataset.from_tensor_slices(images).enumerate().skip(40).map(
      _recipe, num_parallel_calls=tf.data.AUTOTUNE)
  np.testing.assert_array_equal(np.stack(list(resumed.as_numpy_iterator())), serial[40:])
  # Graph (tf.data) and eager execution agree.
  for k in (0, 7, 33):
    eager = _recipe(tf.constant(k, tf.int64), tf.constant(images[k])).numpy()
    np.testing.assert_allclose(eager, serial[k], atol=1e-6)
  assert serial.dtype == np.float32 and serial.shape == (48, 32, 32, 3)


# ----------------------------------------------------------------------------
# Batch form: draws for many images at once, pixels a batch at a time.
# ----------------------------------------------------------------------------


def _batch_draws(seed, num, height=32, width=32):
  """Every sampler's draws for ``num`` images, as a flat dict of arrays."""
  ops, negate = A.sample_rand_augment(seed, num, 2)
  order, factors = A.sample_color_jitter(seed, num, hue=0.1)
  return {
      "crop": A.sample_crop(seed, num, height, width),
      "flip": A.sample_flip(seed, num),
      "ra_ops": ops, "ra_negate": negate,
      "jitter_order": order, "jitter_factors": factors,
      "erase": A.sample_erasing(seed, num, height, width, p=0.5),
      "noise": A.erasing_noise(seed, [num, height, width, 3]),
  }


def test_row_zero_of_a_batch_draw_is_the_single_image_draw():
  # The per-image functions draw num=1; the pipeline draws a whole batch
  # from one seed. Row 0 must be the same draw (the Pillow checks of the
  # per-image functions then cover the batch samplers).
  one = _batch_draws(_seed(21), 1)
  many = _batch_draws(_seed(21), 9)
  for name in one:
    assert many[name].shape[0] == 9
    np.testing.assert_array_equal(many[name][:1].numpy(), one[name].numpy(),
                                  err_msg=name)
  # The rows are different draws.
  assert len({tuple(box) for box in many["crop"].numpy()}) > 1


def test_batch_ops_equal_the_per_image_ops_row_by_row():
  n = 24
  images = _rand_u8((n, 32, 32, 3), seed=22)
  images[3] = 90  # flat: Equalize/AutoContrast leave it, Contrast's mean
  draws = _batch_draws(_seed(23), n)
  # Every RandAugment op occurs in the batch at least once.
  ops = np.arange(n) % len(A.RAND_AUGMENT_OPS)
  negate = draws["ra_negate"][:, 0]
  crops = A.resized_crop_batch(images, draws["crop"], (24, 28)).numpy()
  flips = A.flip_batch(images, draws["flip"]).numpy()
  op_out = A.apply_op_batch(images, tf.constant(ops, tf.int32), 8,
                            negate).numpy()
  jitter = dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
  jittered = A.color_jitter_batch(images, draws["jitter_order"],
                                  draws["jitter_factors"], **jitter).numpy()
  floats = A.to_float01(images)
  erased = A.erasing_batch(floats, draws["erase"], "random",
                           draws["noise"]).numpy()
  assert (draws["erase"].numpy()[:, 2] > 0).any()
  for b in range(n):
    np.testing.assert_array_equal(
        crops[b], A.resized_crop(images[b], draws["crop"][b], (24, 28)))
    np.testing.assert_array_equal(
        flips[b], images[b, :, ::-1] if draws["flip"][b] else images[b])
    np.testing.assert_array_equal(
        op_out[b], A._apply_op(images[b], int(ops[b]), 8, negate[b]),
        err_msg=A.RAND_AUGMENT_OPS[ops[b]])
    np.testing.assert_array_equal(
        jittered[b], A.color_jitter_batch(
            images[b:b + 1], draws["jitter_order"][b:b + 1],
            draws["jitter_factors"][b:b + 1], **jitter)[0])
    np.testing.assert_array_equal(
        erased[b], A.erasing_batch(floats[b:b + 1], draws["erase"][b:b + 1],
                                   "random", draws["noise"][b:b + 1])[0])


def test_a_padded_batch_of_mixed_sizes_crops_each_image_exactly():
  sizes = [(32, 32), (19, 40), (45, 23), (8, 8)]
  canvas = np.zeros((len(sizes), 45, 40, 3), np.uint8)
  images = []
  for b, (h, w) in enumerate(sizes):
    images.append(_rand_u8((h, w, 3), seed=30 + b))
    canvas[b] = 255  # Padding that must never be read.
    canvas[b, :h, :w] = images[-1]
  heights, widths = zip(*sizes)
  boxes = A.sample_crop(_seed(31), len(sizes), tf.constant(heights),
                        tf.constant(widths), scale=(0.3, 1.0))
  out = A.resized_crop_batch(canvas, boxes, (16, 16)).numpy()
  for b, image in enumerate(images):
    box = boxes[b].numpy()
    assert box[0] + box[2] <= sizes[b][0] and box[1] + box[3] <= sizes[b][1]
    np.testing.assert_array_equal(out[b], A.resized_crop(image, box, (16, 16)))
