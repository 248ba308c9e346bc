r"""The project's seed-004 augmentations vs REAL torchvision, op by op.

Reads what ``augment_torchvision_side.py`` saved (run it first, in a venv
with torchvision; its docstring has the setup) and runs the project's ops
(``jaxattn/data/augment.py``, and ``jaxattn/data/pipeline.py`` for the whole
chain) on the same uint8 images with the same parameters. Commands::

  /work/tvenv/bin/python benchmarks/seed004/augment_torchvision_side.py \
      --cifar_dir=/tmp/cifar10/train --out=/tmp/seed004_tv.npz
  /work/venv/bin/python benchmarks/seed004/augment_vs_torchvision.py \
      --torchvision=/tmp/seed004_tv.npz [--table=FILE.md]

Pixel rows give the max and mean absolute difference in 0..255 units
(normalised outputs are scaled back by ``std * 255`` per channel) and how
many of the values differ. Sampling rows compare the project's samplers
(``sample_*``, as many draws as torchvision's) with the classes' own draws:
total variation distance (TV) between the two empirical distributions, next
to the TV two samples of those sizes from one distribution are expected to
show (the sampling noise) and the TV between two project samples from
different seeds.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import scipy.stats  # noqa: E402
import tensorflow as tf  # noqa: E402

from jaxattn import recipes  # noqa: E402
from jaxattn.data import augment as A  # noqa: E402
from jaxattn.data import pipeline  # noqa: E402

SIZE = 32
SCALE_255 = 255.0 * np.array(recipes.CIFAR_STD)  # normalised -> 0..255 units


class Table:
  """The report's rows, printed as three Markdown tables."""

  def __init__(self):
    self.pixel_rows, self.fact_rows, self.dist_rows = [], [], []

  def pixels(self, op, params, ours, ref, *, normalized=False, note=""):
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
      raise ValueError(f"{op} {params}: shapes {ours.shape} vs {ref.shape}")
    d = np.abs(ours - ref)
    if normalized:
      d = d * SCALE_255
    tol = 1e-3 if normalized else 0.0  # float32 round-off of (x - m) / s
    differ = int((d > tol).sum())
    mx, mean = float(d.max()), float(d.mean())
    if mx <= tol:
      verdict = "match (float32 round-off)" if mx > 0 else "exact"
    elif mx <= 1.0 + tol and differ <= 0.001 * d.size:
      verdict = "<= 1 on a few values"
    else:
      verdict = "MISMATCH"
    self.pixel_rows.append((op, params, f"{mx:.4g}", f"{mean:.3g}",
                            f"{differ}/{d.size}",
                            verdict + (f"; {note}" if note else "")))

  def fact(self, what, params, ours, theirs, verdict=None):
    if verdict is None:
      verdict = "exact" if ours == theirs else "MISMATCH"
    self.fact_rows.append((what, params, ours, theirs, verdict))

  def dist(self, what, params, theirs, ours_a, ours_b):
    """torchvision's draws vs two project samples (different seeds)."""
    p = _homogeneity_p(theirs, ours_a)
    self.dist_rows.append((
        what, params, f"{_tv_distance(theirs, ours_a):.4f}",
        f"{_tv_distance(ours_a, ours_b):.4f}", f"{p:.3g}",
        "same distribution" if p >= 1e-3 else "MISMATCH"))

  def markdown(self) -> str:
    def table(head, rows):
      return ("| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n" +
              "".join("| " + " | ".join(str(c) for c in row) + " |\n"
                      for row in rows))
    return "\n".join([
        table(("op", "parameters", "max abs diff (0..255)", "mean abs diff",
               "values differing", "verdict"), self.pixel_rows),
        table(("property", "parameters", "project", "torchvision",
               "verdict"), self.fact_rows),
        table(("sampled quantity", "parameters", "TV torchvision vs project",
               "TV project vs project", "chi2 p", "verdict"),
              self.dist_rows)])

  def mismatches(self):
    return [r for rows in (self.pixel_rows, self.fact_rows, self.dist_rows)
            for r in rows if "MISMATCH" in r[-1] and "control" not in r[0]
            and "context" not in r[0]]


def _box_batch(box, num):
  return tf.constant(np.tile(np.array(box, np.int32), (num, 1)))


# ----------------------------------------------------------------------------
# Fixed-parameter ops.
# ----------------------------------------------------------------------------


def fixed_ops(tv, table: Table):
  images = tv["images"]
  num = len(images)
  for key in sorted(k for k in tv.files if k.startswith("op/crop/")):
    box = [int(v) for v in key.split("/")[-1].split(",")]
    ours = A.resized_crop_batch(images, _box_batch(box, num), (SIZE, SIZE))
    v1 = tv[key.replace("op/", "v1check/", 1)]
    note = ("v1 F.resized_crop = v2" if np.array_equal(v1, tv[key]) else
            "v1 F.resized_crop != v2")
    table.pixels("resized crop, bilinear AA", f"box (t,l,h,w)={tuple(box)}",
                 ours, tv[key], note=note)
  ours = A.flip_batch(images, tf.ones([num], tf.bool))
  table.pixels("horizontal flip", "", ours, tv["op/hflip"])

  names = [str(n) for n in tv["ra_op_names"]]
  table.fact("RandAugment ops", "names and order", " ".join(A.RAND_AUGMENT_OPS),
             " ".join(names))
  tv_signed = {k.split("/")[2] for k in tv.files
               if k.startswith("op/ra/") and k.endswith("/-")}
  table.fact("RandAugment signed ops", "random sign, p=0.5",
             " ".join(sorted(A._SIGNED_OPS)), " ".join(sorted(tv_signed)))
  # A non-square size tells TranslateX's width from TranslateY's height.
  for name in ("TranslateX", "TranslateY"):
    theirs = float(tv[f"ra_magnitude_24x40/{name}"])
    ours_mag = float(A._op_magnitude(name, 8, 31, 24, 40))
    table.fact("RandAugment magnitude", f"{name}, bin 8, 24x40 (HxW) image",
               f"{ours_mag:.7g}", f"{theirs:.7g}",
               "exact" if abs(theirs - ours_mag) <= 1e-5 else "MISMATCH")
  for name in names:
    for bin_ in (8, 30):
      theirs = float(tv[f"ra_magnitude/{name}/{bin_}"])
      ours_mag = float(A._op_magnitude(name, bin_, 31, SIZE, SIZE))
      same = abs(theirs - ours_mag) <= 1e-6 * max(1.0, abs(theirs))
      table.fact("RandAugment magnitude", f"{name}, bin {bin_} of 31",
                 f"{ours_mag:.7g}", f"{theirs:.7g}",
                 "exact" if same else "MISMATCH")
      for sign in "+-":
        key = f"op/ra/{name}/{bin_}/{sign}"
        if key not in tv.files:
          continue
        ours = A.apply_op_batch(images, A.RAND_AUGMENT_OPS.index(name), bin_,
                                sign == "-", fill=0, num_magnitude_bins=31)
        v2 = tv[key.replace("op/", "v2check/", 1)]
        note = "" if np.array_equal(v2, tv[key]) else (
            "v2.functional differs from _apply_op by max "
            f"{np.abs(v2.astype(int) - tv[key]).max()}")
        mag = theirs if sign == "+" else -theirs
        table.pixels(f"RandAugment {name}",
                     f"bin {bin_}/31, magnitude {mag:.6g}", ours, tv[key],
                     note=note)

  jitter = dict(brightness=0.1, contrast=0.1, saturation=0.1)
  for k, name in enumerate(("brightness", "contrast", "saturation")):
    prefix = f"op/jitter/{name}/"
    for key in sorted(x for x in tv.files if x.startswith(prefix)):
      f = float(key.split("/")[-1])
      factors = np.ones([num, 4], np.float32)
      factors[:, k] = f
      order = np.tile(np.arange(4, dtype=np.int32), (num, 1))
      ours = A.color_jitter_batch(images, order, factors, **jitter)
      table.pixels(f"ColorJitter {name}", f"factor {f}", ours, tv[key])

  # Not an augmentation: the image-folder source's decoder (tf.io.decode_image)
  # vs PIL's on the same JPEG files. Every other row starts from PIL's pixels.
  ends = tv["jpeg_ends"]
  files = np.split(tv["jpeg_bytes"], ends[:-1])
  decoded = np.stack([tf.io.decode_image(f.tobytes(), channels=3).numpy()
                      for f in files])
  table.pixels("JPEG decode (data source; context)",
               "tf.io.decode_image (as sources.py) vs PIL, same files",
               decoded, images, note="TF's default DCT is INTEGER_FAST")
  decoded = np.stack([tf.io.decode_jpeg(f.tobytes(), channels=3,
                                        dct_method="INTEGER_ACCURATE").numpy()
                      for f in files])
  table.pixels("JPEG decode (data source; context)",
               'tf.io.decode_jpeg(dct_method="INTEGER_ACCURATE") vs PIL',
               decoded, images)

  config = recipes.seed004_conv_vit()
  ours = pipeline._normalize(tf.cast(images, tf.float32) / 255.0, config)
  table.pixels("ToTensor + Normalize", "CIFAR mean/std", ours,
               tv["op/normalize"], normalized=True)
  for key in sorted(k for k in tv.files if k.startswith("op/erase/")):
    box = [int(v) for v in key.split("/")[-1].split(",")]
    ours = A.erasing_batch(tv["op/normalize"], _box_batch(box, num))
    table.pixels("RandomErasing (F.erase)", f"box {tuple(box)}, value 0",
                 ours, tv[key], normalized=True)


# ----------------------------------------------------------------------------
# The classes' forward with the parameters they drew.
# ----------------------------------------------------------------------------


def class_forwards(tv, table: Table):
  images = tv["images"]
  num = len(images)
  ours = A.rand_augment_batch(images, tf.constant(tv["cls/ra/ops"]),
                              tf.constant(tv["cls/ra/negate"]), magnitude=8)
  ops = sorted({A.RAND_AUGMENT_OPS[k] for k in tv["cls/ra/ops"][:, 0]})
  table.pixels("RandAugment(1, 8).forward",
               f"{num} seeds, {len(ops)} ops drawn",
               ours, tv["cls/ra/out"])
  ours = A.color_jitter_batch(images, tv["cls/jitter/order"],
                              tv["cls/jitter/factors"], brightness=0.1,
                              contrast=0.1, saturation=0.1)
  perms = len({tuple(r) for r in tv["cls/jitter/order"]})
  table.pixels("ColorJitter(.1,.1,.1).forward",
               f"{num} seeds, {perms} distinct orders", ours,
               tv["cls/jitter/out"])
  # The same factors always in the order (0, 1, 2, 3): what ignoring the
  # drawn order would give (shows the order is visible in the pixels).
  fixed = np.tile(np.arange(4, dtype=np.int32), (num, 1))
  ours_fixed = A.color_jitter_batch(images, fixed, tv["cls/jitter/factors"],
                                    brightness=0.1, contrast=0.1,
                                    saturation=0.1)
  table.pixels("ColorJitter forward, order ignored (control)",
               "drawn factors, fixed order b,c,s", ours_fixed,
               tv["cls/jitter/out"])
  ours = A.resized_crop_batch(images, tv["cls/crop/boxes"], (SIZE, SIZE))
  table.pixels("RandomResizedCrop(32, (.75, 1), (1, 1)).forward",
               f"{num} seeds", ours, tv["cls/crop/out"])
  ours = A.erasing_batch(tv["op/normalize"], tv["cls/erase/boxes"])
  table.pixels("RandomErasing(p=1).forward", f"{num} seeds", ours,
               tv["cls/erase/out"], normalized=True)

  config = recipes.seed004_conv_vit()
  params = {
      "crop": tf.constant(tv["cls/compose/crop"], tf.int32),
      "flip": tf.constant(tv["cls/compose/flip"], tf.bool),
      "ra_ops": tf.constant(tv["cls/compose/ra_ops"], tf.int32),
      "ra_negate": tf.constant(tv["cls/compose/ra_negate"], tf.bool),
      "jitter_order": tf.constant(tv["cls/compose/jitter_order"], tf.int32),
      "jitter_factors": tf.constant(tv["cls/compose/jitter_factors"],
                                    tf.float32),
      "erase": tf.constant(tv["cls/compose/erase"], tf.int32),
  }
  ours = pipeline.augment_train_batch(tf.constant(images), params, config)
  erased = int((tv["cls/compose/erase"][:, 2] > 0).sum())
  table.pixels("whole seed-004 Compose (pipeline.augment_train_batch)",
               f"{num} seeds, {erased} erased", ours, tv["cls/compose/out"],
               normalized=True)


# ----------------------------------------------------------------------------
# Sampling distributions.
# ----------------------------------------------------------------------------


def _counts(a, b) -> np.ndarray:
  """[2, K] counts of each value seen in either sample."""
  _, inverse = np.unique(np.concatenate([np.ravel(a), np.ravel(b)]),
                         return_inverse=True)
  k = inverse.max() + 1
  return np.stack([np.bincount(inverse[:np.size(a)], minlength=k),
                   np.bincount(inverse[np.size(a):], minlength=k)]).astype(
                       np.float64)


def _tv_distance(a, b) -> float:
  """Total variation distance of two samples' empirical distributions."""
  counts = _counts(a, b)
  return 0.5 * float(np.abs(counts[0] / np.size(a) -
                            counts[1] / np.size(b)).sum())


def _homogeneity_p(a, b) -> float:
  """Chi-square test that two samples come from one distribution.

  Values expected fewer than 5 times (pooled) are merged into one cell, as
  the test's approximation needs; one cell left means nothing to test.
  """
  counts = _counts(a, b)
  expected = counts.sum(0) * min(np.size(a), np.size(b)) / (np.size(a) +
                                                            np.size(b))
  rare = expected < 5
  if rare.any():
    counts = np.concatenate(
        [counts[:, ~rare], counts[:, rare].sum(1, keepdims=True)], 1)
  if counts.shape[1] < 2:
    return 1.0
  return float(scipy.stats.chi2_contingency(counts)[1])


def _binned(x, lo, hi, bins=20):
  return np.clip(((np.asarray(x) - lo) / (hi - lo) * bins).astype(int), 0,
                 bins - 1)


def distributions(tv, table: Table):
  num = len(tv["dist/flip"])
  s1, s2 = tf.constant([7, 1], tf.int64), tf.constant([7, 2], tf.int64)

  for key, scale, ratio, label in (
      ("dist/crop", (0.75, 1.0), (1.0, 1.0), "scale (.75,1), ratio (1,1)"),
      ("dist/crop_default", (0.08, 1.0), (3 / 4, 4 / 3), "defaults")):
    theirs = tv[key]
    ours = [A.sample_crop(s, num, SIZE, SIZE, scale=scale, ratio=ratio).numpy()
            for s in (s1, s2)]
    for col, name in enumerate(("top", "left", "height", "width")):
      table.dist(f"RandomResizedCrop {name}", label, theirs[:, col],
                 ours[0][:, col], ours[1][:, col])
    area = lambda b: b[:, 2] * b[:, 3]
    table.dist("RandomResizedCrop area h*w", label, area(theirs),
               area(ours[0]), area(ours[1]))
    full = lambda b: (b[:, 2] == SIZE) & (b[:, 3] == SIZE)
    table.dist("RandomResizedCrop whole image (h = w = 32)", label,
               full(theirs), full(ours[0]), full(ours[1]))
    if ratio == (1.0, 1.0):
      square = lambda b: bool(np.all(b[:, 2] == b[:, 3]))
      table.fact("RandomResizedCrop: every box square", label,
                 square(ours[0]), square(theirs))

  # Where the position is uniform given the size: the position's rank in
  # [0, H - h] binned (checks the joint law, not just the marginals).
  rel = lambda pos, room: _binned((pos + 0.5) / (room + 1), 0.0, 1.0, 10)
  theirs = tv["dist/crop_default"]
  ours = [A.sample_crop(s, num, SIZE, SIZE).numpy() for s in (s1, s2)]
  table.dist("RandomResizedCrop top given height", "defaults, "
             "top/(H-h+1) 10 bins", rel(theirs[:, 0], SIZE - theirs[:, 2]),
             *[rel(o[:, 0], SIZE - o[:, 2]) for o in ours])
  for key, (height, width), scale in (
      ("dist/crop_fallback_some", (20, 32), (0.5, 1.0)),
      ("dist/crop_fallback_all", (32, 8), (0.75, 1.0))):
    theirs = tv[key]
    ours = [A.sample_crop(s, num, height, width, scale=scale,
                          ratio=(1.0, 1.0)).numpy() for s in (s1, s2)]
    box_id = lambda b: b @ np.array([1, 100, 10**4, 10**6])
    table.dist("RandomResizedCrop box (t,l,h,w) jointly",
               f"{height}x{width} image, scale {scale}, ratio (1,1)",
               box_id(theirs), *[box_id(o) for o in ours])
    fallback = lambda b: ((b[:, 2] == min(height, width)) &
                          (b[:, 0] == (height - b[:, 2]) // 2) &
                          (b[:, 1] == (width - b[:, 3]) // 2))
    table.dist("RandomResizedCrop: central fallback box",
               f"{height}x{width} image, scale {scale}, ratio (1,1)",
               fallback(theirs), fallback(ours[0]), fallback(ours[1]))

  ours = [A.sample_flip(s, num).numpy() for s in (s1, s2)]
  table.dist("RandomHorizontalFlip coin", "p=0.5", tv["dist/flip"],
             ours[0], ours[1])

  ops_tv = tv["dist/ra_ops"]
  ours = [A.sample_rand_augment(s, num, 1) for s in (s1, s2)]
  ops = [o[0].numpy()[:, 0] for o in ours]
  neg = [o[1].numpy()[:, 0] for o in ours]
  table.dist("RandAugment op index", "uniform of 14", ops_tv, ops[0],
             ops[1])
  signed = np.array([A.RAND_AUGMENT_OPS[k] in A._SIGNED_OPS for k in range(14)])
  neg_tv = tv["dist/ra_magnitude"][signed[ops_tv]] < 0
  table.dist("RandAugment sign of signed ops", "p(-)=0.5", neg_tv,
             neg[0][signed[ops[0]]], neg[1][signed[ops[1]]])

  perm_id = lambda rows: np.asarray(rows) @ np.array([1, 4, 16, 64])
  ours = [A.sample_color_jitter(s, num) for s in (s1, s2)]
  table.dist("ColorJitter order", "permutation of 4 (24 values)",
             perm_id(tv["dist/jitter_order"]),
             *[perm_id(o[0].numpy()) for o in ours])
  for k, name in enumerate(("brightness", "contrast", "saturation")):
    theirs = tv["dist/jitter_factors"][:, k]
    mine = [o[1].numpy()[:, k] for o in ours]
    table.dist(f"ColorJitter {name} factor", "U[0.9, 1.1], 20 bins",
               _binned(theirs, 0.9, 1.1), *[_binned(m, 0.9, 1.1) for m in mine])
    inside = lambda x: bool(np.all((x >= 0.9) & (x <= 1.1)))
    table.fact(f"ColorJitter {name} factor in [0.9, 1.1]",
               f"min/max project {mine[0].min():.5f}/{mine[0].max():.5f}, "
               f"torchvision {theirs.min():.5f}/{theirs.max():.5f}",
               inside(mine[0]), inside(theirs))
  order_first = lambda rows: np.asarray(rows)[:, 0]
  table.dist("ColorJitter first op", "b/c/s/h", order_first(
      tv["dist/jitter_order"]), *[order_first(o[0].numpy()) for o in ours])

  ours = [A.sample_erasing(s, num, SIZE, SIZE, p=0.25).numpy()
          for s in (s1, s2)]
  erased = lambda b: b[:, 2] > 0
  table.dist("RandomErasing applied", "p=0.25", erased(tv["dist/erase"]),
             erased(ours[0]), erased(ours[1]))
  ours = [A.sample_erasing(s, num, SIZE, SIZE, p=1.0).numpy() for s in (s1, s2)]
  theirs = tv["dist/erase_p1"]
  for col, name in enumerate(("top", "left", "height", "width")):
    table.dist(f"RandomErasing {name}", "p=1, scale (.02,.33), "
               "ratio (.3,3.3)", theirs[:, col], ours[0][:, col],
               ours[1][:, col])
  area = lambda b: b[:, 2] * b[:, 3]
  table.dist("RandomErasing area h*w", "p=1", area(theirs), area(ours[0]),
             area(ours[1]))
  aspect = lambda b: _binned(np.log(np.maximum(b[:, 2], 1) / np.maximum(
      b[:, 3], 1)), np.log(0.3), np.log(3.3))
  table.dist("RandomErasing log(h/w), 20 bins", "p=1", aspect(theirs),
             aspect(ours[0]), aspect(ours[1]))
  table.dist("RandomErasing top given height", "p=1, top/(H-h+1) 10 "
             "bins", rel(theirs[:, 0], SIZE - theirs[:, 2]),
             *[rel(o[:, 0], SIZE - o[:, 2]) for o in ours])
  table.dist("RandomErasing left given width", "p=1, left/(W-w+1) 10 "
             "bins", rel(theirs[:, 1], SIZE - theirs[:, 3]),
             *[rel(o[:, 1], SIZE - o[:, 3]) for o in ours])
  table.dist("RandomErasing: no box in 10 attempts", "p=1", ~erased(theirs),
             ~erased(ours[0]), ~erased(ours[1]))
  theirs = tv["dist/erase_wide"]
  # An image left alone is [0, 0, 0, 0] on the torchvision side; the
  # project's rows for it have h = w = 0 and an unused (top, left).
  ours = [A.sample_erasing(s, num, 4, 64, p=1.0).numpy() for s in (s1, s2)]
  ours = [np.where(o[:, 2:3] > 0, o, 0) for o in ours]
  box_id = lambda b: b @ np.array([1, 100, 10**4, 10**6])
  table.dist("RandomErasing box (t,l,h,w) jointly",
             "4x64 image, p=1 (most candidates do not fit)", box_id(theirs),
             *[box_id(o) for o in ours])
  table.dist("RandomErasing: no box in 10 attempts",
             "4x64 image, p=1", ~erased(theirs),
             *[~erased(o) for o in ours])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--torchvision", default="/tmp/seed004_tv.npz")
  parser.add_argument("--table", default="", help="Also write the table here.")
  args = parser.parse_args()
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  tv = np.load(args.torchvision)
  torch_v, tv_v, pil_v = (str(v) for v in tv["versions"])
  table = Table()
  fixed_ops(tv, table)
  class_forwards(tv, table)
  distributions(tv, table)
  text = (f"torch {torch_v}, torchvision {tv_v}, Pillow {pil_v} (reference); "
          f"tensorflow {tf.__version__}; {len(tv['images'])} CIFAR-10 images, "
          f"{len(tv['dist/flip'])} draws per distribution.\n\n"
          + table.markdown())
  print(text)
  if args.table:
    with open(args.table, "w") as f:
      f.write(text)
  print(f"{len(table.mismatches())} mismatching augmentation rows (the "
        "control and context rows aside).")


if __name__ == "__main__":
  main()
