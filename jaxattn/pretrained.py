"""``config.init_from``: start training from pretrained weights.

``config.init_from`` is one of:

* a directory written by ``python -m jaxattn.convert from-torch`` (or the
  ``variables.npz`` inside it): ``variables.npz`` holds '/'-joined
  ``params/...`` and ``batch_stats/...`` paths, and ``conversion.json`` beside
  it says where they came from and which variables stay at their
  initialisation (a partial import, e.g. torchvision's ImageNet ResNet
  into seed 001's SL-ResNet: ``sl/fc`` and the head stay at init, as the
  authors had it). Both ``params`` and ``batch_stats`` are loaded. Every
  variable of the model must be in the file unless ``conversion.json`` lists
  it as kept at init;
* a vit_jax / big_vision ``.npz`` (e.g. the AugReg ViT-B/8 the seed 000
  authors froze) into the hybrid model's ``backbone``;
* for any other model, an ``.npz`` of '/'-joined *params* paths covering all
  of them (no ``batch_stats``).

PyTorch ``.pth`` / ``.safetensors`` files go through ``python -m
jaxattn.convert from-torch`` first. Every missing, unexpected and mis-shaped
variable is reported at once.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import numpy as np
from flax import traverse_util

from jaxattn.models import hybrid

PyTree = Any

VARIABLES_FILE = "variables.npz"
CONVERSION_FILE = "conversion.json"
CONVERSION_FORMAT = "jaxattn.convert/1"
_COLLECTIONS = ("params", "batch_stats")
_FROM_TORCH = ("python -m jaxattn.convert from-torch FILE "
               "--config=configs/NAME.py[:ARGS] --out DIR")


def _paths(path: str) -> tuple[str, str | None]:
  """(variables .npz, its conversion.json or None) for a file or directory."""
  if os.path.isdir(path):
    npz = os.path.join(path, VARIABLES_FILE)
  else:
    npz = path
  record = os.path.join(os.path.dirname(npz), CONVERSION_FILE)
  return npz, record if os.path.isfile(record) else None


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
  if os.path.isdir(path):
    if not os.path.isfile(os.path.join(path, VARIABLES_FILE)):
      raise FileNotFoundError(
          f"config.init_from={path!r} is a directory without "
          f"{VARIABLES_FILE}. Write one with: {_FROM_TORCH}")
    return
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"config.init_from={path!r} is not a file or a directory.")
  if not path.endswith(".npz"):
    raise ValueError(
        f"config.init_from={path!r}: only .npz files and directories written "
        f"by the converter load directly. Convert PyTorch weights first: "
        f"{_FROM_TORCH}, then pass --config.init_from=DIR.")


def _read_npz(path: str) -> dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as npz:
    return {k: np.asarray(npz[k]) for k in npz.files}


def _is_variables_file(flat: dict[str, np.ndarray]) -> bool:
  return bool(flat) and all(k.split("/", 1)[0] in _COLLECTIONS and "/" in k
                            for k in flat)


def load(config: ml_collections.ConfigDict, params: PyTree,
         batch_stats: PyTree | None = None) -> tuple[PyTree, PyTree]:
  """Returns ``(params, batch_stats)`` with the pretrained part replaced.

  Host NumPy arrays in the targets' dtypes; ``batch_stats`` is returned as
  given when the file has none (vit_jax and params-only files).
  """
  check(config)
  batch_stats = {} if batch_stats is None else batch_stats
  if not config.init_from:
    return params, batch_stats
  npz_path, record_path = _paths(config.init_from)
  flat = _read_npz(npz_path)
  if _is_variables_file(flat):
    record = None
    if record_path:
      with open(record_path) as f:
        record = json.load(f)
    return _load_variables(config, npz_path, flat, record, params, batch_stats)
  if config.model.name == "hybrid":
    params = dict(params)
    params["backbone"] = hybrid.load_vit_npz(npz_path, params["backbone"])
    return params, batch_stats
  # Any other model: an .npz of '/'-joined paths covering all its params.
  flat = {tuple(k.split("/")): v for k, v in flat.items()}
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
      {k: flat[k].astype(target[k].dtype) for k in target}), batch_stats


def key_listing(names, limit: int = 40) -> str:
  """Indented lines naming the keys of a mismatch report (at most `limit`)."""
  names = list(names)
  text = "".join(f"\n    {n}" for n in names[:limit])
  return text + (f"\n    ... and {len(names) - limit} more"
                 if len(names) > limit else "")


def _load_variables(config, npz_path, flat, record, params, batch_stats):
  """A converter's variables.npz: params and batch_stats, checked together."""
  target = {}
  for collection, tree in (("params", params), ("batch_stats", batch_stats)):
    for path, value in traverse_util.flatten_dict(dict(tree or {})).items():
      target["/".join((collection, *path))] = value
  kept = set(record["kept_at_init"]) if record else set()
  missing = sorted(set(target) - set(flat) - kept)
  unexpected = sorted(set(flat) - set(target))
  stale = sorted(kept - set(target))
  wrong = sorted(f"{k}: file {flat[k].shape}, model {tuple(target[k].shape)}"
                 for k in set(flat) & set(target)
                 if flat[k].shape != tuple(target[k].shape))
  if missing or unexpected or stale or wrong:
    lines = [f"config.init_from={config.init_from!r} does not fit model "
             f"{config.model.name!r} ({len(flat)} variables in {npz_path}, "
             f"{len(target)} in the model)."]
    if missing:
      lines.append(f"  Missing from the file ({len(missing)}):"
                   f"{key_listing(missing)}")
      if not record:
        lines.append(f"  (No {CONVERSION_FILE} beside the file: a partial "
                     "import needs one listing the variables that stay at "
                     "their initialisation; from-torch writes it.)")
    if unexpected:
      lines.append(f"  Unexpected in the file ({len(unexpected)}):"
                   f"{key_listing(unexpected)}")
    if stale:
      lines.append(f"  Listed as kept at init in {CONVERSION_FILE} but not "
                   f"in the model ({len(stale)}):{key_listing(stale)}")
    if wrong:
      lines.append(f"  Shape mismatches ({len(wrong)}):{key_listing(wrong)}")
    if record:
      lines.append(f"The file was converted from {record.get('source')} "
                   f"(layout {record.get('layout')!r}) for model "
                   f"{record.get('model')} with {record.get('num_classes')} "
                   f"classes at {record.get('image_size')} px; convert it "
                   f"again with this run's config: {_FROM_TORCH}")
    raise ValueError("\n".join(lines))
  out = {c: {} for c in _COLLECTIONS}
  for key, value in target.items():
    collection, path = key.split("/", 1)
    new = flat[key].astype(value.dtype) if key in flat else np.asarray(value)
    out[collection][tuple(path.split("/"))] = new
  new_params = traverse_util.unflatten_dict(out["params"])
  new_stats = (traverse_util.unflatten_dict(out["batch_stats"])
               if out["batch_stats"] else batch_stats)
  return new_params, new_stats
