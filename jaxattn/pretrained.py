"""``config.init_from``: start training from pretrained weights.

Supported now: a vit_jax / big_vision ``.npz`` (e.g. the AugReg ViT-B/8 the
seed 000 authors froze) into the hybrid model's ``backbone``. PyTorch
``.pth`` / ``.safetensors`` files (torchvision's ImageNet ResNets for seed
001) go through ``python -m jaxattn.convert from-torch`` first, which writes
an ``.npz`` of Flax parameters that this hook then loads.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np
from flax import traverse_util

from jaxattn.models import hybrid

PyTree = Any


def check(config: ml_collections.ConfigDict) -> None:
  """Fails before any compile when required weights are not given."""
  path = config.init_from
  if not path:
    if config.pretrained_required:
      raise ValueError(
          f"config.model.name={config.model.name!r} trains on top of frozen "
          "pretrained weights, but config.init_from is empty. Pass "
          "--config.init_from=PATH.npz (for the hybrid: the vit_jax AugReg "
          "ViT-B/8 checkpoint B_8-i21k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0"
          "-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224.npz), or "
          "--config.pretrained_required=False to train from random weights.")
    return
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config.init_from={path!r} is not a file.")
  if not path.endswith(".npz"):
    raise ValueError(
        f"config.init_from={path!r}: only .npz files load directly. Convert "
        "PyTorch weights first: python -m jaxattn.convert from-torch FILE "
        "--config=... --out DIR (the checkpoint-conversion issue).")


def load(config: ml_collections.ConfigDict, params: PyTree) -> PyTree:
  """Returns `params` with the pretrained part replaced (host arrays)."""
  check(config)
  if not config.init_from:
    return params
  if config.model.name == "hybrid":
    params = dict(params)
    params["backbone"] = hybrid.load_vit_npz(config.init_from,
                                             params["backbone"])
    return params
  # Any other model: an .npz of '/'-joined paths covering all its params
  # (what `jaxattn.convert from-torch` writes).
  with np.load(config.init_from, allow_pickle=False) as npz:
    flat = {tuple(k.split("/")): np.asarray(npz[k]) for k in npz.files}
  target = traverse_util.flatten_dict(params)
  missing = sorted("/".join(k) for k in set(target) - set(flat))
  unexpected = sorted("/".join(k) for k in set(flat) - set(target))
  wrong = sorted(f"{'/'.join(k)}: file {flat[k].shape} vs model "
                 f"{tuple(target[k].shape)}" for k in set(flat) & set(target)
                 if flat[k].shape != tuple(target[k].shape))
  if missing or unexpected or wrong:
    raise ValueError(
        f"config.init_from={config.init_from!r} does not fit model "
        f"{config.model.name!r}: missing {missing}, unexpected {unexpected}, "
        f"wrong shapes {wrong}.")
  return traverse_util.unflatten_dict(
      {k: flat[k].astype(target[k].dtype) for k in target})
