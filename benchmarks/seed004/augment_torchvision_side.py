r"""Seed 004's training augmentations run by REAL torchvision, saved to .npz.

Runs in a separate virtual environment that has torch and torchvision (the
project's venv has neither); ``augment_vs_torchvision.py`` then runs the
project's ops (``jaxattn/data/augment.py``) with the same parameters in the
project's venv and reports the differences. Commands::

  python3 -m venv /work/tvenv
  /work/tvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 pillow numpy
  mkdir -p /tmp/cifar10
  tar xzf shared/data/cifar10/cifar10-train-jpeg.tar.gz -C /tmp/cifar10
  /work/tvenv/bin/python benchmarks/seed004/augment_torchvision_side.py \
      --cifar_dir=/tmp/cifar10/train --out=/tmp/seed004_tv.npz
  /work/venv/bin/python benchmarks/seed004/augment_vs_torchvision.py \
      --torchvision=/tmp/seed004_tv.npz

Seed 004's transforms (torchvision, on PIL 32x32 CIFAR-10 images)::

  RandomResizedCrop(32, scale=(0.75, 1.0), ratio=(1.0, 1.0))
  RandomHorizontalFlip(0.5)
  RandAugment(num_ops=1, magnitude=8)
  ColorJitter(0.1, 0.1, 0.1)
  ToTensor()
  Normalize((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
  RandomErasing(p=0.25)

What is saved (``--num_images`` real CIFAR-10 training images, picked evenly
from the sorted file list, decoded once by PIL; both sides start from these
very uint8 arrays, so JPEG decoding plays no part in the differences; the
files' bytes are saved too, for a separate decoder check):

* ``op/<name>``: one op with FIXED parameters, through the functional API
  the transform classes call on PIL images: the resized crop of a given box
  (``v2.functional.resized_crop``, bilinear, antialias), the horizontal
  flip, each of RandAugment's 14 ops at bins 8 (the seed's) and 30, both
  signs, via ``torchvision.transforms.autoaugment._apply_op`` (what
  ``RandAugment.forward`` calls, NEAREST, fill None) with the magnitudes of
  ``RandAugment._augmentation_space(31, (32, 32))``, and via
  ``v2.functional`` as a cross-check; ColorJitter's brightness, contrast and
  saturation at fixed factors; ToTensor + Normalize; RandomErasing's
  ``F.erase`` of given boxes with value 0 on the normalised tensor.
* ``cls/<name>``: the transform CLASSES' own ``forward`` under
  ``torch.manual_seed``, one seed per image, with the parameters that
  forward drew (read by replaying the same draws from the same RNG state):
  RandAugment, ColorJitter (random order of its three ops), RandomErasing,
  RandomResizedCrop, and the whole seed-004 ``Compose``.
* ``dist/<name>``: many parameter draws of the classes' samplers (for the
  sampling distributions): RandomResizedCrop.get_params (seed 004's
  arguments, the defaults, and two image shapes where some or all of the
  10 attempts fail and the central fallback is taken), RandAugment's op and
  sign (logged from the real forward), ColorJitter.get_params,
  RandomErasing's boxes (read back from the real forward at p=0.25; from
  get_params at p=1, also on a 4x64 image where most candidates do not
  fit), the flip coin.
"""

from __future__ import annotations

import argparse
import glob
import math
import os

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import autoaugment as AA
from torchvision.transforms import functional as F1
from torchvision.transforms.v2 import functional as F2

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2471, 0.2435, 0.2616)
SIZE = 32
RA_BINS = (8, 30)
CROP_BOXES = ((0, 0, 32, 32), (2, 3, 28, 28), (4, 0, 28, 28), (1, 2, 30, 30),
              (0, 3, 29, 29), (1, 0, 31, 31), (3, 1, 24, 30), (5, 7, 16, 12))
JITTER_FACTORS = (0.9, 0.95, 1.05, 1.1)
ERASE_BOXES = ((0, 0, 5, 7), (10, 3, 20, 4), (25, 25, 7, 7), (3, 9, 14, 14))


def load_images(cifar_dir: str, num: int):
  """(uint8 [num, 32, 32, 3] decoded by PIL, the files' bytes, their ends)."""
  paths = sorted(glob.glob(os.path.join(cifar_dir, "*", "*.jpg")))
  if not paths:
    raise SystemExit(f"No JPEGs under {cifar_dir}/<class>/.")
  picks = [paths[k] for k in np.linspace(0, len(paths) - 1, num).astype(int)]
  images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in picks])
  files = [np.fromfile(p, np.uint8) for p in picks]
  return images, np.concatenate(files), np.cumsum([len(f) for f in files])


def to_normalized(pil) -> torch.Tensor:
  return T.Normalize(MEAN, STD)(T.ToTensor()(pil))


def chw_to_hwc(t: torch.Tensor) -> np.ndarray:
  return t.permute(1, 2, 0).numpy().astype(np.float32)


def fixed_ops(images: np.ndarray, out: dict) -> None:
  pils = [Image.fromarray(im) for im in images]
  stack = lambda fn: np.stack([np.asarray(fn(p)) for p in pils])
  for top, left, h, w in CROP_BOXES:
    out[f"op/crop/{top},{left},{h},{w}"] = stack(
        lambda p: F2.resized_crop(p, top, left, h, w, [SIZE, SIZE],
                                  InterpolationMode.BILINEAR, antialias=True))
    v1 = stack(lambda p: F1.resized_crop(
        p, top, left, h, w, [SIZE, SIZE], InterpolationMode.BILINEAR,
        antialias=True))
    out[f"v1check/crop/{top},{left},{h},{w}"] = v1
  out["op/hflip"] = stack(F2.horizontal_flip)

  space = T.RandAugment(num_ops=1, magnitude=8)._augmentation_space(
      31, (SIZE, SIZE))
  out["ra_op_names"] = np.array(list(space))
  wide = T.RandAugment()._augmentation_space(31, (24, 40))
  for name in ("TranslateX", "TranslateY"):
    out[f"ra_magnitude_24x40/{name}"] = np.float64(wide[name][0][8].item())
  for name, (mags, signed) in space.items():
    for bin_ in RA_BINS:
      mag = float(mags[bin_].item()) if mags.ndim > 0 else 0.0
      out[f"ra_magnitude/{name}/{bin_}"] = np.float64(mag)
      for sign in ((1.0, -1.0) if signed else (1.0,)):
        m = sign * mag
        key = f"{name}/{bin_}/{'-' if sign < 0 else '+'}"
        out[f"op/ra/{key}"] = stack(lambda p: AA._apply_op(
            p, name, m, interpolation=InterpolationMode.NEAREST, fill=None))
        out[f"v2check/ra/{key}"] = stack(lambda p: ra_op_v2(p, name, m))

  for f in JITTER_FACTORS:
    out[f"op/jitter/brightness/{f}"] = stack(
        lambda p: F2.adjust_brightness(p, f))
    out[f"op/jitter/contrast/{f}"] = stack(lambda p: F2.adjust_contrast(p, f))
    out[f"op/jitter/saturation/{f}"] = stack(
        lambda p: F2.adjust_saturation(p, f))

  normalized = [to_normalized(p) for p in pils]
  out["op/normalize"] = np.stack([chw_to_hwc(t) for t in normalized])
  for top, left, h, w in ERASE_BOXES:
    out[f"op/erase/{top},{left},{h},{w}"] = np.stack([
        chw_to_hwc(F2.erase(t, top, left, h, w, torch.tensor([0.0])[:, None,
                                                                     None]))
        for t in normalized])


def ra_op_v2(pil, name: str, m: float):
  """RandAugment's op ``name`` at magnitude ``m`` through v2.functional."""
  nearest = InterpolationMode.NEAREST
  deg = math.degrees(math.atan(m))
  return {
      "Identity": lambda: pil,
      "ShearX": lambda: F2.affine(pil, angle=0.0, translate=[0, 0], scale=1.0,
                                  shear=[deg, 0.0], interpolation=nearest,
                                  center=[0, 0]),
      "ShearY": lambda: F2.affine(pil, angle=0.0, translate=[0, 0], scale=1.0,
                                  shear=[0.0, deg], interpolation=nearest,
                                  center=[0, 0]),
      "TranslateX": lambda: F2.affine(pil, angle=0.0, translate=[int(m), 0],
                                      scale=1.0, shear=[0.0, 0.0],
                                      interpolation=nearest),
      "TranslateY": lambda: F2.affine(pil, angle=0.0, translate=[0, int(m)],
                                      scale=1.0, shear=[0.0, 0.0],
                                      interpolation=nearest),
      "Rotate": lambda: F2.rotate(pil, m, interpolation=nearest),
      "Brightness": lambda: F2.adjust_brightness(pil, 1.0 + m),
      "Color": lambda: F2.adjust_saturation(pil, 1.0 + m),
      "Contrast": lambda: F2.adjust_contrast(pil, 1.0 + m),
      "Sharpness": lambda: F2.adjust_sharpness(pil, 1.0 + m),
      "Posterize": lambda: F2.posterize(pil, int(m)),
      "Solarize": lambda: F2.solarize(pil, m),
      "AutoContrast": lambda: F2.autocontrast(pil),
      "Equalize": lambda: F2.equalize(pil),
  }[name]()


# ----------------------------------------------------------------------------
# The classes' forward, with the parameters it drew.
# ----------------------------------------------------------------------------


def replay(seed: int, draw):
  """``draw()`` from the RNG state ``torch.manual_seed(seed)`` gives."""
  torch.manual_seed(seed)
  return draw()


def ra_draws(t: T.RandAugment):
  names = list(t._augmentation_space(t.num_magnitude_bins, (SIZE, SIZE)))
  space = t._augmentation_space(t.num_magnitude_bins, (SIZE, SIZE))
  op = int(torch.randint(len(names), (1,)).item())
  negate = bool(space[names[op]][1] and torch.randint(2, (1,)))
  return op, negate


def jitter_draws(t: T.ColorJitter):
  order, b, c, s, _ = t.get_params(t.brightness, t.contrast, t.saturation,
                                   t.hue)
  return [int(k) for k in order], [b, c, s, 1.0]


def erasing_draws(t: T.RandomErasing, shape):
  if not torch.rand(1) < t.p:
    return [0, 0, 0, 0]
  i, j, h, w, _ = t.get_params(torch.zeros(shape), scale=t.scale,
                               ratio=t.ratio, value=[0.0])
  # No box fitted in 10 attempts: get_params returns the whole image (and
  # forward leaves it unchanged); every box it erases has h < H.
  return [0, 0, 0, 0] if h == shape[-2] else [i, j, h, w]


def crop_draws(t: T.RandomResizedCrop, pil):
  return list(t.get_params(pil, t.scale, t.ratio))


def seed004_transforms():
  return (T.RandomResizedCrop(SIZE, scale=(0.75, 1.0), ratio=(1.0, 1.0)),
          T.RandomHorizontalFlip(0.5),
          T.RandAugment(num_ops=1, magnitude=8),
          T.ColorJitter(0.1, 0.1, 0.1),
          T.ToTensor(),
          T.Normalize(MEAN, STD),
          T.RandomErasing(p=0.25))


def class_forwards(images: np.ndarray, out: dict) -> None:
  pils = [Image.fromarray(im) for im in images]
  seeds = [4000 + k for k in range(len(pils))]
  rrc, flip, ra, cj, to_tensor, norm, erasing = seed004_transforms()
  shape = (3, SIZE, SIZE)

  rows = [(replay(s, lambda: ra_draws(ra)), replay(s, lambda: ra(p)))
          for s, p in zip(seeds, pils)]
  out["cls/ra/ops"] = np.array([[r[0][0]] for r in rows], np.int32)
  out["cls/ra/negate"] = np.array([[r[0][1]] for r in rows], bool)
  out["cls/ra/out"] = np.stack([np.asarray(r[1]) for r in rows])

  rows = [(replay(s, lambda: jitter_draws(cj)), replay(s, lambda: cj(p)))
          for s, p in zip(seeds, pils)]
  out["cls/jitter/order"] = np.array([r[0][0] for r in rows], np.int32)
  out["cls/jitter/factors"] = np.array([r[0][1] for r in rows], np.float32)
  out["cls/jitter/out"] = np.stack([np.asarray(r[1]) for r in rows])

  rows = [(replay(s, lambda: crop_draws(rrc, p)), replay(s, lambda: rrc(p)))
          for s, p in zip(seeds, pils)]
  out["cls/crop/boxes"] = np.array([r[0] for r in rows], np.int32)
  out["cls/crop/out"] = np.stack([np.asarray(r[1]) for r in rows])

  # RandomErasing at p=1 so that every image is erased (p is checked in dist/).
  erase_all = T.RandomErasing(p=1.0)
  normalized = [to_normalized(p) for p in pils]
  rows = [(replay(s, lambda: erasing_draws(erase_all, shape)),
           replay(s, lambda: erase_all(t.clone())))
          for s, t in zip(seeds, normalized)]
  out["cls/erase/boxes"] = np.array([r[0] for r in rows], np.int32)
  out["cls/erase/out"] = np.stack([chw_to_hwc(r[1]) for r in rows])

  # The whole Compose; each stage's draws are read from the RNG state it
  # starts from, then the stage runs from that same state.
  params = {k: [] for k in ("crop", "flip", "ra_ops", "ra_negate",
                            "jitter_order", "jitter_factors", "erase")}
  outs = []
  for s, p in zip(seeds, pils):
    torch.manual_seed(s)
    img = p
    stages = [
        (rrc, lambda: params["crop"].append(crop_draws(rrc, img))),
        (flip, lambda: params["flip"].append(bool(torch.rand(1) < flip.p))),
        (ra, lambda: _append_ra(params, ra_draws(ra))),
        (cj, lambda: _append_jitter(params, jitter_draws(cj))),
        (to_tensor, None),
        (norm, None),
        (erasing, lambda: params["erase"].append(erasing_draws(erasing,
                                                               shape))),
    ]
    for transform, record in stages:
      if record is not None:
        state = torch.get_rng_state()
        record()
        torch.set_rng_state(state)
      img = transform(img)
    outs.append(chw_to_hwc(img))
  for key, values in params.items():
    out[f"cls/compose/{key}"] = np.array(values)
  out["cls/compose/out"] = np.stack(outs)


def _append_ra(params, draws):
  params["ra_ops"].append([draws[0]])
  params["ra_negate"].append([draws[1]])


def _append_jitter(params, draws):
  params["jitter_order"].append(draws[0])
  params["jitter_factors"].append(draws[1])


# ----------------------------------------------------------------------------
# Sampling distributions.
# ----------------------------------------------------------------------------


def distributions(num: int, out: dict) -> None:
  torch.manual_seed(404)
  rrc, flip, ra, cj, _, _, erasing = seed004_transforms()
  dummy = torch.zeros(3, SIZE, SIZE)
  out["dist/crop"] = np.array(
      [rrc.get_params(dummy, rrc.scale, rrc.ratio) for _ in range(num)],
      np.int32)
  # RandomResizedCrop's defaults too (seed 002), where the fallback and the
  # ratio matter.
  default = T.RandomResizedCrop(SIZE)
  out["dist/crop_default"] = np.array(
      [default.get_params(dummy, default.scale, default.ratio)
       for _ in range(num)], np.int32)
  # Images where some or all of the 10 attempts fail (the fallback): H x W
  # 20 x 32 with scale (0.5, 1), ratio (1, 1) falls back with p = 0.75**10;
  # 32 x 8 always does.
  for name, shape, scale in (("crop_fallback_some", (3, 20, 32), (0.5, 1.0)),
                             ("crop_fallback_all", (3, 32, 8), (0.75, 1.0))):
    img = torch.zeros(shape)
    out[f"dist/{name}"] = np.array(
        [T.RandomResizedCrop.get_params(img, scale, (1.0, 1.0))
         for _ in range(num)], np.int32)
  out["dist/flip"] = np.array([bool(torch.rand(1) < flip.p)
                               for _ in range(num)])

  logged = []
  real_apply = AA._apply_op

  def logging_apply(img, op_name, magnitude, interpolation, fill):
    logged.append((op_name, magnitude))
    return img

  AA._apply_op = logging_apply
  try:
    tiny = Image.new("RGB", (SIZE, SIZE))
    for _ in range(num):
      ra(tiny)
  finally:
    AA._apply_op = real_apply
  names = list(ra._augmentation_space(31, (SIZE, SIZE)))
  out["dist/ra_ops"] = np.array([names.index(n) for n, _ in logged], np.int32)
  out["dist/ra_magnitude"] = np.array([m for _, m in logged], np.float64)

  draws = [cj.get_params(cj.brightness, cj.contrast, cj.saturation, cj.hue)
           for _ in range(num)]
  out["dist/jitter_order"] = np.array([[int(k) for k in d[0]] for d in draws],
                                      np.int32)
  out["dist/jitter_factors"] = np.array([d[1:4] for d in draws], np.float64)

  # Boxes read back from the real forward: value 0 on an all-ones tensor.
  boxes = []
  ones = torch.ones(3, SIZE, SIZE)
  for _ in range(num):
    erased = (erasing(ones.clone())[0] == 0).numpy()
    if not erased.any():
      boxes.append([0, 0, 0, 0])
      continue
    rows, cols = np.nonzero(erased.any(1))[0], np.nonzero(erased.any(0))[0]
    boxes.append([rows[0], cols[0], rows[-1] - rows[0] + 1,
                  cols[-1] - cols[0] + 1])
  out["dist/erase"] = np.array(boxes, np.int32)
  erase_all = T.RandomErasing(p=1.0)
  out["dist/erase_p1"] = np.array(
      [erasing_draws(erase_all, (3, SIZE, SIZE)) for _ in range(num)],
      np.int32)
  # A 4 x 64 image, where most candidate boxes do not fit (h < 4 is rare),
  # so the 10 attempts and the "erase nothing" outcome are exercised.
  out["dist/erase_wide"] = np.array(
      [erasing_draws(erase_all, (3, 4, 64)) for _ in range(num)], np.int32)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cifar_dir", default="/tmp/cifar10/train")
  parser.add_argument("--num_images", type=int, default=64)
  parser.add_argument("--num_draws", type=int, default=50000,
                      help="Samples per sampling distribution.")
  parser.add_argument("--out", default="/tmp/seed004_tv.npz")
  args = parser.parse_args()
  torch.set_num_threads(1)
  images, jpeg_bytes, jpeg_ends = load_images(args.cifar_dir, args.num_images)
  out = {"images": images, "jpeg_bytes": jpeg_bytes, "jpeg_ends": jpeg_ends,
         "versions": np.array([torch.__version__, torchvision.__version__,
                               Image.__version__])}
  fixed_ops(images, out)
  class_forwards(images, out)
  distributions(args.num_draws, out)
  np.savez_compressed(args.out, **out)
  print(f"{len(out)} arrays -> {args.out} (torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, Pillow {Image.__version__})")


if __name__ == "__main__":
  main()
