"""Public API: load a trained model for inference."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import ml_collections

from jaxattn import checkpointing, experiment


def load(workdir_or_checkpoint_dir: str, step: int | str | None = None
         ) -> tuple[nn.Module, dict[str, Any], ml_collections.ConfigDict]:
  """Returns ``(model, variables, config)`` of a trained run.

  ``model.apply(variables, images, train=False)`` gives logits for NHWC
  float32 images preprocessed as in evaluation (resized to
  ``config.image_size``, scaled to [0, 1], normalised with
  ``config.pixel_mean`` / ``config.pixel_std``). ``step`` is a step number,
  'latest' or 'best' (default: the step in the path, else the latest).
  """
  workdir, path_step = checkpointing.split_checkpoint_path(
      workdir_or_checkpoint_dir)
  which = step if step is not None else (path_step if path_step is not None
                                         else "latest")
  exp = experiment.Experiment.for_workdir(workdir)
  state, _, _ = exp.restore(which)
  return exp.model, jax.device_get(exp.eval_variables(state)), exp.config
