"""Running a trained model on image files: shared by predict and explain.

Files are decoded and preprocessed as the evaluation pipeline does it
(``jaxattn.data.image_files``, its TensorFlow-free twin), so a prediction on
a file equals the one evaluation makes on the same image in the dataset; no
TensorFlow is needed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from jaxattn import checkpointing, experiment, losses
from jaxattn.data import DatasetError, image_files, on_device
from jaxattn.errors import BadInputError
from jaxattn.models import (ModelInterface, get_interface, interface,
                            known_models)

PyTree = Any


class InputError(BadInputError, ValueError):
  """A workdir, image file or option that cannot be used; says the fix."""


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained model restored from a workdir, ready for inference."""

  model: nn.Module
  variables: PyTree
  config: ml_collections.ConfigDict
  step: int

  @property
  def class_names(self) -> list[str]:
    names = list(self.config.get("class_names") or [])
    # A model may have more outputs than the dataset has classes (seed 001
    # keeps 1000 logits); those outputs are named by their index.
    return names + [str(i) for i in range(len(names), self.config.num_classes)]

  @property
  def loss_spec(self) -> losses.LossSpec:
    name = self.config.model.name
    # A Run may wrap an unregistered module (tests, notebooks): defaults.
    interface = (get_interface(name) if name in known_models()
                 else ModelInterface())
    return interface.loss_spec(self.config)


def start_command(argv: Sequence[str], usage: str) -> None:
  """What predict and explain do first: only warnings in the log (unless
  --verbosity or --library_logs is given; their results are printed), a JAX
  device per core on CPU as main.py, and a usage error without a
  workdir."""
  from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
  from jaxattn import cpu_defaults  # pylint: disable=g-import-not-at-top
  if not (flags.FLAGS["verbosity"].present or
          flags.FLAGS.get_flag_value("library_logs", False)):
    logging.set_verbosity(logging.WARNING)
  cpu_defaults.configure()
  if len(argv) < 2:
    raise app.UsageError(f"Usage: {usage}")


def load_run(workdir: str, checkpoint: str = "best") -> Run:
  """Restores `checkpoint` ('best', 'latest' or a step) of a workdir.

  'best' falls back to the latest checkpoint when the run kept no best one
  (training without a validation split), since that is then the only model.
  """
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir):
    raise InputError(f"Workdir {workdir} does not exist. Pass the --workdir "
                     "of a training run (python main.py --config=... "
                     "--workdir=DIR).")
  if not os.path.exists(os.path.join(workdir, checkpointing.CONFIG_FILE)):
    raise InputError(
        f"{workdir} has no {checkpointing.CONFIG_FILE}: it is not a jaxattn "
        "workdir. Pass the --workdir of a training run.")
  exp = experiment.Experiment.for_workdir(workdir)
  if exp.input_kind != interface.INPUT_IMAGES:
    raise InputError(
        f"{workdir} trained {exp.config.model.name!r}, which classifies "
        f"{exp.input_kind} (cached backbone logits), not images; predict and "
        "explain need a model that takes images (e.g. 'hybrid').")
  ckpt = checkpointing.RunCheckpoints(workdir, read_only=True)
  try:
    if ckpt.latest_step() is None and ckpt.best_step() is None:
      raise InputError(
          f"{workdir} holds no checkpoint yet: train first (python main.py "
          f"--config=... --workdir={workdir}) or wait for the first epoch to "
          "end.")
    state, _, step = exp.restore(checkpoint, checkpoints=ckpt,
                                 best_or_latest=True)
  except checkpointing.CheckpointError as e:
    raise InputError(str(e)) from None
  finally:
    ckpt.close()
  return Run(exp.model, jax.device_get(exp.eval_variables(state)), exp.config,
             int(step))


def read_images(paths: Sequence[str], config: ml_collections.ConfigDict
                ) -> np.ndarray:
  """Image files -> float32 [N, H, W, C], preprocessed as in evaluation."""
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise InputError(f"Image file(s) not found: {', '.join(missing)}. Check "
                     "the paths (PNG, JPEG, BMP or GIF files).")
  images = []
  for path in paths:
    try:
      # A file it cannot decode (truncated, a CMYK JPEG for a 1-channel
      # model, ...) is named with what it is.
      decoded = image_files.decode(path, config.num_channels)
    except DatasetError as e:
      raise InputError(str(e)) from None
    images.append(image_files.preprocess_for_eval(decoded, config))
  return np.stack(images)


def to_display(images: np.ndarray, config: ml_collections.ConfigDict
               ) -> np.ndarray:
  """Preprocessed model inputs -> [0, 1] floats: the image the model saw
  (uint8 pixels, not yet standardised, are only scaled)."""
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255.0
  mean = np.asarray(config.pixel_mean, np.float32)
  std = np.asarray(config.pixel_std, np.float32)
  return np.clip(images * std + mean, 0.0, 1.0)


def label_from_path(path: str, class_names: Sequence[str]) -> int | None:
  """The class of a file in a ``<class>/<file>`` folder, else None."""
  parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
  return list(class_names).index(parent) if parent in class_names else None


def output_logits(model_output: Any, loss_spec: losses.LossSpec) -> jax.Array:
  """The logits metrics use: the metric output of a dict, log-probabilities
  for softmax outputs (so softmax of them gives back the probabilities)."""
  if isinstance(model_output, dict):
    model_output = model_output[loss_spec.metric_output]
  return loss_spec.as_logits(model_output)


def make_predict_fn(run: Run, batch_size: int = 32):
  """``images -> class probabilities [N, num_classes]``, jitted, in batches
  (a ViT-B/8's attention over 785 tokens takes GBs for a hundred images)."""

  @jax.jit
  def predict(variables, images):
    # uint8 images (the eval pipeline's) are standardised first.
    images = on_device.prepare_images(
        images, pixel_mean=tuple(run.config.pixel_mean),
        pixel_std=tuple(run.config.pixel_std))
    output = run.model.apply(variables, images, train=False)
    return jax.nn.softmax(output_logits(output, run.loss_spec), axis=-1)

  def predict_all(images: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [np.asarray(predict(run.variables, images[batch]))
         for batch in in_batches(len(images), batch_size)] or
        [np.zeros((0, run.config.num_classes), np.float32)])

  return predict_all


def in_batches(n: int, batch_size: int) -> list[slice]:
  return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
