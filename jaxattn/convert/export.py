"""A training run -> one self-contained ``jax.export`` file of its model.

``export_run(path, out)`` restores a checkpoint (``inference.load_run``) and
serializes the eval-mode forward pass that evaluation and ``predict`` run:
NHWC float32 images, preprocessed as in evaluation, -> float32 logits
``[batch, num_classes]`` exactly as the metrics take them
(``inference.output_logits``: a dict output's metric output, the clipped log
of softmax probabilities). The variables are baked into the program as
constants, so the file alone runs the model, with jax and nothing else (no
jaxattn, Flax or checkpoint), in the jax version that wrote it or one
released up to about six months later (JAX's compatibility guarantee for
exports; an older jax may refuse it):

  exported = jax.export.deserialize(bytearray(open(FILE, "rb").read()))
  logits = exported.call(images)

The batch dimension is symbolic (``b``, any size >= 1) unless a fixed
``batch_size`` is asked for. The program is lowered for CPU and CUDA
(``PLATFORMS``; JAX cross-lowers for CUDA without a GPU), and ``call``
picks the platform it runs on. ``FILE.json`` beside it says what the file
takes and gives: the model, step, input shape with the batch as ``"b"``,
dtype, class names, the preprocessing (image size, eval crop, pixel
mean/std) and the jax version it was written with.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattn.convert import files
from jaxattn.convert.plan import ConversionError

# Lowered for both: `Exported.call` chooses by the backend it runs on.
PLATFORMS = ("cpu", "cuda")
SIDECAR_SUFFIX = ".json"
SIDECAR_FORMAT = "jaxattn.export/1"
BATCH_DIM = "b"
_HINT = ("Pass a training workdir (main.py's --workdir) or one of its "
         "checkpoints/<step> directories; --step best|latest|N picks the "
         "checkpoint.")


def sidecar_path(out: str) -> str:
  return out + SIDECAR_SUFFIX


def _check_takes_images(workdir: str) -> None:
  """Fails, before anything is restored, for a model fed features."""
  from jaxattn import checkpointing  # pylint: disable=g-import-not-at-top
  from jaxattn.models import get_interface, interface  # pylint: disable=g-import-not-at-top
  try:
    config = checkpointing.load_config(workdir)
  except checkpointing.CheckpointError as e:
    raise ConversionError(f"{e} {_HINT}") from None
  name = config.model.name
  try:
    kind = get_interface(name).input_kind(config)
  except ValueError as e:  # A model this jaxattn does not know.
    raise ConversionError(f"{workdir}: {e}") from None
  if kind != interface.INPUT_IMAGES:
    raise ConversionError(
        f"{workdir} trained {name!r}, which classifies {kind} (the frozen "
        "backbone's cached outputs), not images; an exported model takes "
        "images. Export a run of a model that takes images instead (e.g. "
        "'hybrid', whose --config.cache_backbone_features=True trains the "
        "head on cached backbone outputs just as fast).")


def _input_spec(config, batch_size: int):
  if batch_size:
    batch = batch_size
  else:
    batch, = jax.export.symbolic_shape(BATCH_DIM)  # Constrained to >= 1.
  shape = (batch, *(int(s) for s in config.image_size),
           int(config.num_channels))
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def _shape_json(shape) -> list[int | str]:
  return [d if isinstance(d, int) else str(d) for d in shape]


def export_run(path: str, out: str, *, step: int | str | None = None,
               batch_size: int = 0, overwrite: bool = False
               ) -> dict[str, Any]:
  """Writes ``out`` (a serialized ``jax.export.Exported``) and ``out.json``.

  ``path``: a workdir or one of its ``checkpoints[_best]/<step>``
  directories; ``step``: a number, 'best' or 'latest' (default: the step in
  the path, else the best, which is the latest when the run kept no best
  one); ``batch_size``: 0 for a symbolic batch, N > 0 for exactly N images.
  Returns the sidecar's content plus ``out``, ``sidecar`` and ``num_bytes``.
  """
  from jaxattn import checkpointing, inference  # pylint: disable=g-import-not-at-top

  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or (
      batch_size < 0):
    raise ConversionError(
        f"--batch_size={batch_size!r}: give 0 (any batch size, the default) "
        "or a positive number of images.")
  example = "model.jaxexport"
  files.check_out_file(out, overwrite=overwrite, example=example)
  sidecar = sidecar_path(out)
  if os.path.exists(sidecar) and not overwrite:
    raise ConversionError(
        f"{sidecar} (the description written beside --out) already exists. "
        "Pass --overwrite to replace both, or choose another --out.")
  files.check_out_file(sidecar, overwrite=overwrite, example=example)

  workdir, path_step = checkpointing.split_checkpoint_path(path)
  if not os.path.isdir(workdir):
    raise ConversionError(f"{path} is not a directory. {_HINT}")
  _check_takes_images(workdir)
  which = step if step is not None else (
      path_step if path_step is not None else "best")
  try:
    run = inference.load_run(workdir, which)
  except inference.InputError as e:
    raise ConversionError(f"{e} {_HINT}") from None
  config = run.config

  # Host arrays closed over by the jitted function are lowered as constants
  # of the program: the file then needs no checkpoint (and takes one input).
  variables = jax.tree.map(np.asarray, run.variables)

  def forward(images):
    output = run.model.apply(variables, images, train=False)
    return inference.output_logits(output, run.loss_spec)

  try:
    exported = jax.export.export(jax.jit(forward), platforms=PLATFORMS)(
        _input_spec(config, batch_size))
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(
        f"Exporting {config.model.name!r} for {', '.join(PLATFORMS)} failed "
        f"({type(e).__name__}: {e}).") from e
  blob = exported.serialize()

  (in_aval,), (out_aval,) = exported.in_avals, exported.out_avals
  record = {
      "format": SIDECAR_FORMAT,
      "file": os.path.basename(out),
      "model": config.model.name,
      "model_config": config.model.to_dict(),
      "workdir": workdir,
      "step": run.step,
      "input_shape": _shape_json(in_aval.shape),
      "input_layout": "NHWC",
      "dtype": str(in_aval.dtype),
      "output_shape": _shape_json(out_aval.shape),
      "output_dtype": str(out_aval.dtype),
      "output": ("logits as the metrics take them: softmax gives the class "
                 "probabilities, argmax the predicted class"),
      "class_names": run.class_names,
      "preprocessing": {
          "image_size": [int(s) for s in config.image_size],
          "num_channels": int(config.num_channels),
          "eval_crop_fraction": float(config.get("eval_crop_fraction", 0.0)),
          "pixel_mean": [float(v) for v in config.pixel_mean],
          "pixel_std": [float(v) for v in config.pixel_std],
          "how": ("uint8 image -> float32, resized (bilinear, antialiased) "
                  "to image_size (with eval_crop_fraction f > 0: resized to "
                  "cover image_size / f, then centre-cropped), / 255, then "
                  "(x - pixel_mean) / pixel_std per channel; "
                  "jaxattn.inference.read_images does exactly this"),
      },
      "platforms": list(exported.platforms),
      "jax_version": jax.__version__,
      "calling_convention_version": exported.calling_convention_version,
      "call": ("jax.export.deserialize(bytearray(open("
               f"{os.path.basename(out)!r}, 'rb').read())).call(images)"),
  }

  def write_blob(tmp):
    with open(tmp, "wb") as f:
      f.write(blob)

  def write_json(tmp):
    with open(tmp, "w") as f:
      json.dump(record, f, indent=2)

  files.atomic_write(out, write_blob)
  files.atomic_write(sidecar, write_json)
  return dict(record, out=os.path.abspath(out),
              sidecar=os.path.abspath(sidecar), num_bytes=len(blob))
