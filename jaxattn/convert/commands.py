"""The two conversions end to end: a training run -> a PyTorch file, and a
PyTorch (or vit_jax) file -> Flax variables that training starts from.

``to_torch(path, out)``: restores a checkpoint (``jaxattn.load``), converts
its ``params`` and ``batch_stats`` with the model's layout and writes a
state_dict (.safetensors by default; .pt/.pth/.bin with ``torch.save``).

``from_torch(file, config, out_dir)``: builds the config's model (shapes
only, nothing is initialised), converts the file with the layout and writes
``out_dir/variables.npz`` ('/'-joined ``params/...`` and ``batch_stats/...``
paths) and ``out_dir/conversion.json`` (where the variables came from, and
which ones a partial layout leaves at their initialisation). Pass the
directory as ``--config.init_from`` to train from it (``jaxattn.pretrained``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import numpy as np

from jaxattn.convert import files, plan as plan_lib, rules
from jaxattn.convert.plan import ConversionError, flax_name

_COLLECTIONS = ("params", "batch_stats")


def _plain(value):
  if isinstance(value, (tuple, list)):
    return [_plain(v) for v in value]
  if hasattr(value, "to_dict"):
    return {k: _plain(v) for k, v in value.to_dict().items()}
  return value


def torch_model_spec(config: ml_collections.ConfigDict
                     ) -> tuple[str, dict[str, Any]]:
  """``(name, kwargs)`` for ``jaxattn.torch_models.create_torch_model``: the
  PyTorch twin of a resolved config's model."""
  from jaxattn.models import get_interface, interface  # pylint: disable=g-import-not-at-top
  kwargs = {k: _plain(v) for k, v in config.model.items() if k != "name"}
  name = config.model.name
  model_interface = get_interface(name)
  kwargs["num_classes"] = int(config.num_classes)
  if model_interface.input_kind(config) == interface.INPUT_IMAGES:
    kwargs["in_channels"] = int(config.num_channels)
  if model_interface.twin_needs_image_size:
    kwargs["image_size"] = [int(s) for s in config.image_size]
  return name, kwargs


def torch_model_for(workdir_or_config):
  """The ``jaxattn.torch_models`` twin of a run (workdir, checkpoint dir or
  resolved config), built with its config; load a converted file into it."""
  from jaxattn import checkpointing  # pylint: disable=g-import-not-at-top
  from jaxattn.torch_models import create_torch_model  # pylint: disable=g-import-not-at-top
  config = workdir_or_config
  if isinstance(config, (str, os.PathLike)):
    config = checkpointing.load_config(
        checkpointing.split_checkpoint_path(os.fspath(config))[0])
  name, kwargs = torch_model_spec(config)
  return create_torch_model(name, **kwargs)


def flatten_variables(variables) -> dict[tuple[str, ...], np.ndarray]:
  """{(collection, *path): array} of ``params`` and ``batch_stats``."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  flat = {}
  for collection in _COLLECTIONS:
    if collection in variables and variables[collection]:
      for path, value in traverse_util.flatten_dict(
          dict(variables[collection])).items():
        flat[(collection, *path)] = value
  return flat


def _layout(model: str, name: str | None) -> rules.Layout:
  try:
    return rules.get_layout(model, name)
  except rules.UnknownLayoutError as e:
    raise ConversionError(str(e)) from None


# --------------------------------------------------------------------------
# Flax -> PyTorch.
# --------------------------------------------------------------------------


def state_dict_from_variables(model: str, variables, layout: str | None = None
                              ) -> tuple[dict[str, np.ndarray], plan_lib.Plan]:
  """Flax ``variables`` of registered ``model`` -> ({key: array}, plan)."""
  flat = {k: np.asarray(v) for k, v in flatten_variables(variables).items()}
  plan = plan_lib.make_plan(_layout(model, layout),
                            {k: v.shape for k, v in flat.items()})
  return plan.to_torch(flat), plan


def to_torch(path: str, out: str, *, step: int | str | None = None,
             layout: str | None = None, overwrite: bool = False
             ) -> dict[str, Any]:
  """Converts a run's checkpoint to a PyTorch state_dict file.

  ``path``: a workdir or one of its ``checkpoints[_best]/<step>``
  directories; ``step``: a number, 'latest' or 'best' (default: the step in
  the path, else the latest). Returns a summary (what was written).
  """
  from jaxattn import api, checkpointing  # pylint: disable=g-import-not-at-top
  files.check_writable(out, overwrite=overwrite)
  hint = ("Pass a training workdir (main.py's --workdir) or one of its "
          "checkpoints/<step> directories; --step best|latest|N picks the "
          "checkpoint.")
  workdir, path_step = checkpointing.split_checkpoint_path(path)
  if not os.path.isdir(workdir):
    raise ConversionError(f"{path} is not a directory. {hint}")
  try:
    config = checkpointing.load_config(workdir)
    chosen = _layout(config.model.name, layout)  # Fail before restoring.
    which = step if step is not None else (
        path_step if path_step is not None else "latest")
    ckpt = checkpointing.RunCheckpoints(workdir, read_only=True)
    try:
      _, step_number = ckpt.resolve(which)
    finally:
      ckpt.close()
    _, variables, config = api.load(workdir, step_number)
  except (checkpointing.CheckpointError, FileNotFoundError) as e:
    raise ConversionError(f"{e} {hint}") from None
  name = config.model.name
  state_dict, plan = state_dict_from_variables(name, variables, chosen.name)
  torch_name, torch_kwargs = torch_model_spec(config)
  metadata = {
      "format": "pt",
      "jaxattn.model": name,
      "jaxattn.layout": chosen.name,
      "jaxattn.step": str(step_number),
      "jaxattn.workdir": workdir,
  }
  if not chosen.partial:
    metadata["jaxattn.torch_model"] = json.dumps(
        {"name": torch_name, "kwargs": torch_kwargs})
  files.write_state_dict(state_dict, out, metadata=metadata,
                         overwrite=overwrite)
  return {
      "out": os.path.abspath(out), "model": name, "layout": chosen.name,
      "step": step_number, "num_tensors": len(state_dict),
      "left_out": [flax_name(k) for k in plan.unmapped],
      "torch_model": None if chosen.partial else (torch_name, torch_kwargs),
      "numerics": chosen.numerics,
  }


# --------------------------------------------------------------------------
# PyTorch -> Flax.
# --------------------------------------------------------------------------


def load_config_file(spec: str, overrides=()) -> ml_collections.ConfigDict:
  """``configs/NAME.py[:ARGS]`` with ``KEY=VALUE`` overrides, as main.py
  reads ``--config`` (``jaxattn.configlib.load``)."""
  from jaxattn import configlib  # pylint: disable=g-import-not-at-top
  try:
    return configlib.load(spec, overrides)
  except configlib.ConfigError as e:
    raise ConversionError(str(e)) from None


def model_shapes(config: ml_collections.ConfigDict):
  """(resolved config, model, {(collection, *path): shape}), no init run."""
  from jaxattn import experiment  # pylint: disable=g-import-not-at-top
  exp = experiment.Experiment(config, data="metadata")
  variables = exp.abstract_state.variables()
  shapes = {k: tuple(v.shape) for k, v in flatten_variables(variables).items()}
  return exp.config, exp.model, shapes


def _check_out_dir(out_dir: str, overwrite: bool) -> None:
  from jaxattn import pretrained  # pylint: disable=g-import-not-at-top
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise ConversionError(f"--out {out_dir} is a file; from-torch writes a "
                          "directory (variables.npz + conversion.json).")
  taken = [f for f in (pretrained.VARIABLES_FILE, pretrained.CONVERSION_FILE)
           if os.path.exists(os.path.join(out_dir, f))]
  if taken and not overwrite:
    raise ConversionError(
        f"--out {out_dir} already holds {', '.join(taken)}. Pass --overwrite "
        "to replace them, or choose another --out.")


def _convert_state_dict(state_dict, shapes, layout: rules.Layout, source):
  plan = plan_lib.make_plan(layout, shapes)
  if layout.file_format == "npz":
    try:
      state_dict = rules.from_big_vision(state_dict)
    except ValueError as e:
      raise ConversionError(f"{source}: {e}") from None
  flat, report = plan.from_torch(state_dict, source=source)
  return flat, plan, report


def variables_from_state_dict(state_dict, shapes, model: str,
                              layout: str | None = None, *,
                              source: str = "the state_dict"):
  """{key: array} -> ({(collection, *path): array}, plan, report).

  On a mismatch, the error also names another layout of the model that the
  file fits, if one does (a timm file given to the hybrid's default layout).
  """
  chosen = _layout(model, layout)
  try:
    return _convert_state_dict(state_dict, shapes, chosen, source)
  except ConversionError as e:
    fits = []
    for other in rules.layouts(model).values():
      if other.name == chosen.name:
        continue
      try:
        _convert_state_dict(state_dict, shapes, other, source)
        fits.append(other.name)
      except ConversionError:
        pass
    if not fits:
      raise
    lines = [line for line in str(e).splitlines()
             if not line.startswith(f"Hint: {plan_lib.GENERIC_HINT}")]
    lines.append(f"Hint: the file fits layout {fits[0]!r} of model "
                 f"{model!r}: pass --layout {fits[0]}.")
    raise ConversionError("\n".join(lines)) from None


def from_torch(file: str, config: ml_collections.ConfigDict, out_dir: str, *,
               layout: str | None = None, overwrite: bool = False,
               config_spec: str = "") -> dict[str, Any]:
  """Converts a PyTorch / vit_jax file into ``out_dir`` for ``init_from``.

  Returns the content of ``conversion.json``.
  """
  from jaxattn import pretrained  # pylint: disable=g-import-not-at-top
  _check_out_dir(out_dir, overwrite)
  if not os.path.isfile(file):
    raise ConversionError(f"{file} does not exist (or is not a file).")
  try:
    config, _, shapes = model_shapes(config)
  except ValueError as e:  # Unknown model or option, dataset metadata, ...
    raise ConversionError(f"The config does not build a model: {e}") from None
  name = config.model.name
  if layout is None and files.kind_of(file) == "npz" and (
      "vit_jax" in rules.layouts(name)):
    layout = "vit_jax"
  chosen = _layout(name, layout)
  state_dict, info = files.read_state_dict(file)
  flat, plan, report = variables_from_state_dict(state_dict, shapes, name,
                                                 chosen.name, source=file)
  record = {
      "format": pretrained.CONVERSION_FORMAT,
      "source": os.path.abspath(file),
      "source_format": info["format"],
      "source_wrapper": info.get("wrapper", ""),
      "layout": chosen.name,
      "config": config_spec,
      "model": _plain(config.model),
      "num_classes": int(config.num_classes),
      "image_size": [int(s) for s in config.image_size],
      "num_channels": int(config.num_channels),
      "loaded": sorted(flax_name(k) for k in flat),
      "kept_at_init": [flax_name(k) for k in plan.unmapped],
      "ignored_source_keys": report["ignored"],
      "stripped_prefix": report["stripped_prefix"],
      "resized": report["resized"],
  }
  os.makedirs(out_dir, exist_ok=True)

  def write_npz(tmp):
    with open(tmp, "wb") as f:
      np.savez(f, **{flax_name(k): v for k, v in flat.items()})

  files.atomic_write(os.path.join(out_dir, pretrained.VARIABLES_FILE),
                     write_npz)

  def write_json(tmp):
    with open(tmp, "w") as f:
      json.dump(record, f, indent=2)

  files.atomic_write(os.path.join(out_dir, pretrained.CONVERSION_FILE),
                     write_json)
  return record
