"""CIFAR-10 training JPEGs upscaled to Food-101's size (512 x 384) and
re-encoded: the 224-px pipeline benchmark's data."""
import os, sys
from PIL import Image
src, dst, per_class = sys.argv[1], sys.argv[2], int(sys.argv[3])
for cls in sorted(os.listdir(os.path.join(src, "train"))):
  os.makedirs(os.path.join(dst, "train", cls), exist_ok=True)
  for name in sorted(os.listdir(os.path.join(src, "train", cls)))[:per_class]:
    im = Image.open(os.path.join(src, "train", cls, name)).convert("RGB")
    im.resize((512, 384), Image.BICUBIC).save(
        os.path.join(dst, "train", cls, name), quality=90)
