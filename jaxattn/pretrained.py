"""``config.init_from``: start training from pretrained weights.

``config.init_from`` is one of:

* a name, ``KIND:NAME`` (``augreg:<AugReg ViT name>``,
  ``torchvision:resnet50|resnet101|resnet152``): downloaded once into a cache,
  checked, and for PyTorch files converted once (``jaxattn.weights_hub``); the
  result then loads as the paths below. An existing path is always a path;
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

from jaxattn import weights, weights_hub
from jaxattn.configlib import ConfigError
from jaxattn.errors import BadInputError

PyTree = Any

VARIABLES_FILE = "variables.npz"
CONVERSION_FILE = "conversion.json"
CONVERSION_FORMAT = "jaxattn.convert/1"
_COLLECTIONS = ("params", "batch_stats")
_FROM_TORCH = ("python -m jaxattn.convert from-torch FILE "
               "--config=configs/NAME.py[:ARGS] --out DIR")


class InitFromNotFoundError(BadInputError, FileNotFoundError):
  """config.init_from names no file, converted directory or weights name."""


def _paths(path: str) -> tuple[str, str | None]:
  """(variables .npz, its conversion.json or None) for a file or directory."""
  if os.path.isdir(path):
    npz = os.path.join(path, VARIABLES_FILE)
  else:
    npz = path
  record = os.path.join(os.path.dirname(npz), CONVERSION_FILE)
  return npz, record if os.path.isfile(record) else None


def check(config: ml_collections.ConfigDict) -> str:
  """Fails before any compile when required weights are not given or cannot
  be had. Returns the local path to read ("" for none): a name is
  downloaded and converted here (once; later calls find it cached)."""
  if not config.init_from:
    if config.pretrained_required:
      raise ConfigError(
          f"config.model.name={config.model.name!r} trains on top of frozen "
          "pretrained weights, but config.init_from is empty. Pass a name, "
          f"--config.init_from={weights_hub.AUGREG_B8} (downloaded once), or "
          "a file, --config.init_from=PATH.npz (for the hybrid: the vit_jax "
          "AugReg ViT-B/8 checkpoint B_8-i21k-300ep-lr_0.001-aug_medium2-wd_"
          "0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224.npz), or "
          "--config.pretrained_required=False to train from random weights.")
    return ""
  path = weights_hub.resolve(config)
  if os.path.isdir(path):
    if not os.path.isfile(os.path.join(path, VARIABLES_FILE)):
      raise InitFromNotFoundError(
          f"config.init_from={path!r} is a directory without "
          f"{VARIABLES_FILE}. Write one with: {_FROM_TORCH}")
    return path
  if not os.path.isfile(path):
    raise InitFromNotFoundError(
        f"config.init_from={path!r} is not a file or a directory, nor a "
        f"weights name (KIND:NAME; known: {weights_hub.known_names()}).")
  if not path.endswith(".npz"):
    raise ConfigError(
        f"config.init_from={path!r}: only .npz files and directories written "
        f"by the converter load directly. Convert PyTorch weights first: "
        f"{_FROM_TORCH}, then pass --config.init_from=DIR.")
  return path


def _read_npz(path: str) -> dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as npz:
    return {k: np.asarray(npz[k]) for k in npz.files}


def _is_variables_file(flat: dict[str, np.ndarray]) -> bool:
  return bool(flat) and all(k.split("/", 1)[0] in _COLLECTIONS and "/" in k
                            for k in flat)


def load(config: ml_collections.ConfigDict, params: PyTree,
         batch_stats: PyTree | None = None, *, interface=None
         ) -> tuple[PyTree, PyTree]:
  """Returns ``(params, batch_stats)`` with the pretrained part replaced.

  Host NumPy arrays in the targets' dtypes; ``batch_stats`` is returned as
  given when the file has none (vit_jax and params-only files). A plain
  ``.npz`` goes to the model interface's ``import_npz`` (default: the
  registered model's), which knows where it belongs (the hybrid's backbone).
  """
  path = check(config)
  batch_stats = {} if batch_stats is None else batch_stats
  if not path:
    return params, batch_stats
  npz_path, record_path = _paths(path)
  flat = _read_npz(npz_path)
  if _is_variables_file(flat):
    record = None
    if record_path:
      with open(record_path) as f:
        record = json.load(f)
    return _load_variables(config, npz_path, flat, record, params, batch_stats)
  if interface is None:
    from jaxattn.models import get_interface  # pylint: disable=g-import-not-at-top
    interface = get_interface(config.model.name)
  return interface.import_npz(config, flat, params, npz_path), batch_stats


def _load_variables(config, npz_path, flat, record, params, batch_stats):
  """A converter's variables.npz: params and batch_stats, checked together."""
  target = traverse_util.flatten_dict(
      {"params": params, "batch_stats": batch_stats}, sep="/")

  def notes(mismatch: weights.Mismatch) -> list[str]:
    if not record and mismatch.missing:
      return [f"  (No {CONVERSION_FILE} beside the file: a partial import "
              "needs one listing the variables that stay at their "
              "initialisation; from-torch writes it.)"]
    if not record:
      return []
    return [f"Its {CONVERSION_FILE} says it was converted from "
            f"{record.get('source')} (layout {record.get('layout')!r}) for "
            f"model {record.get('model')} with {record.get('num_classes')} "
            f"classes at {record.get('image_size')} px; convert it again with "
            f"this run's config: {_FROM_TORCH}"]

  matched = weights.match_arrays(
      target, flat, kept_at_init=record["kept_at_init"] if record else (),
      header=weights.init_from_header(config.init_from, config.model.name,
                                      npz_path, len(flat), len(target)),
      hints=notes)
  # Variables kept at init keep the values they came with.
  loaded = traverse_util.unflatten_dict(
      {k: matched.get(k, np.asarray(v)) for k, v in target.items()}, sep="/")
  return (loaded.get("params", {}),
          loaded.get("batch_stats", batch_stats))
