"""Weights & Biases beside TensorBoard: a CLU ``MetricWriter`` for wandb.

``config.wandb_project`` turns it on (process 0 only, as the TensorBoard
writer); ``config.wandb_mode="offline"`` writes ``WORKDIR/wandb/`` without a
network, for ``wandb sync`` later. The run is named after the workdir and
resumes with it (the id is the workdir's), so a preempted and resumed run
stays one wandb run.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from clu.metric_writers import interface

from jaxattn.configlib import ConfigError


class WandbWriter(interface.MetricWriter):
  """Scalars, hyperparameters and images to a wandb run."""

  def __init__(self, workdir: str, *, project: str, mode: str = "online",
               config: Mapping[str, Any] | None = None):
    try:
      import wandb  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ImportError(
          f"config.wandb_project={project!r} needs wandb: pip install "
          "'jaxattn[wandb]' (or set --config.wandb_project='').") from None
    if mode not in ("online", "offline", "disabled"):
      raise ConfigError(f"config.wandb_mode={mode!r} must be 'online', "
                        "'offline' or 'disabled'.")
    self._wandb = wandb
    run_id = hashlib.sha1(os.path.abspath(workdir).encode()).hexdigest()[:16]
    self._run = wandb.init(project=project, dir=workdir, mode=mode,
                           id=run_id, resume="allow",
                           name=os.path.basename(os.path.abspath(workdir)),
                           config=dict(config or {}))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    self._run.log({k: float(np.asarray(v)) for k, v in scalars.items()},
                  step=step)

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    self._run.log({k: self._wandb.Image(np.asarray(v)[0])
                   for k, v in images.items()}, step=step)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    self._run.config.update(dict(hparams), allow_val_change=True)

  # TensorBoard keeps these; wandb gets the scalars, images and config.
  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_texts(self, step, texts):
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets

  def write_summaries(self, step, values, metadata=None):
    del step, values, metadata

  def flush(self) -> None:
    pass

  def close(self) -> None:
    self._run.finish()
