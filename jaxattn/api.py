"""Public API: load a trained model for inference."""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from jaxattn import checkpointing, optim, parallel, train


def _split_path(path: str) -> tuple[str, int | None]:
  """workdir | workdir/checkpoints[_best] | .../<step> -> (workdir, step)."""
  path = os.path.abspath(path)
  base = os.path.basename(path)
  if base.isdigit() and os.path.basename(os.path.dirname(path)) in (
      checkpointing.LATEST_DIR, checkpointing.BEST_DIR):
    return os.path.dirname(os.path.dirname(path)), int(base)
  if base in (checkpointing.LATEST_DIR, checkpointing.BEST_DIR):
    return os.path.dirname(path), None
  return path, None


def load(workdir_or_checkpoint_dir: str, step: int | str | None = None
         ) -> tuple[nn.Module, dict[str, Any], ml_collections.ConfigDict]:
  """Returns ``(model, variables, config)`` of a trained run.

  ``model.apply(variables, images, train=False)`` gives logits for NHWC
  float32 images preprocessed as in evaluation (resized to
  ``config.image_size``, scaled to [0, 1], normalised with
  ``config.pixel_mean`` / ``config.pixel_std``). ``step`` is a step number,
  'latest' or 'best' (default: the step in the path, else the latest).
  """
  workdir, path_step = _split_path(workdir_or_checkpoint_dir)
  config = checkpointing.load_config(workdir)
  which = step if step is not None else (path_step if path_step is not None
                                         else "latest")
  model = train.build_model(config)
  tx = optim.create_optimizer(config, optim.create_learning_rate_fn(config, 1, 1))
  mesh = parallel.create_mesh()
  abstract_state = train.abstract_train_state(config, model, tx, mesh)
  ckpt = checkpointing.RunCheckpoints(workdir, read_only=True)
  try:
    state, _, _ = ckpt.restore(abstract_state, which)
  finally:
    ckpt.close()
  variables = jax.device_get(state.variables())
  return model, variables, config
