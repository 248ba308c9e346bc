"""Evaluate a saved checkpoint on any split: ``main.py --mode=eval``."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
from absl import logging

# Evaluation reads its split with tf.data: without TensorFlow (the data
# extra) this import is the error that names the extra, before clu's
# writer, which imports TensorFlow too.
from jaxattn.data import tf_import  # pylint: disable=unused-import,g-bad-import-order
from clu import metric_writers

from jaxattn import checkpointing, experiment, plots
from jaxattn.configlib import ConfigError


def evaluate_checkpoint(workdir: str, *, checkpoint: str = "best",
                        split: str = "",
                        config: ml_collections.ConfigDict | None = None
                        ) -> dict[str, Any]:
  """Evaluates checkpoint 'best' | 'latest' | STEP on `split`.

  The config defaults to the one saved in the workdir; `split` defaults to
  the config's test split, else its validation split. The metrics are also
  written to ``WORKDIR/eval_<split>_step<N>.json``, the confusion matrix to
  ``WORKDIR/confusion_<split>_step<N>.png`` and the training curves to
  ``WORKDIR/curves.png``, both also as TensorBoard images under
  ``eval_<split>/``.
  """
  config = checkpointing.load_config(workdir) if config is None else config
  # The dataset is read (the split is evaluated); the optimizer state is
  # restored too, as the checkpoint holds one.
  exp = experiment.Experiment(config, workdir=workdir)
  config = exp.config
  split = split or config.test_split or config.val_split
  if not split:
    raise ConfigError("No split to evaluate: pass --split=NAME.")
  state, _, step = exp.restore(checkpoint)
  results = exp.evaluate(state, split)
  results.update(split=split, step=step, checkpoint=str(checkpoint))
  logging.info("Eval of %s (step %d) on %s: %s", checkpoint, step, split,
               results)
  safe_split = "".join(c if c.isalnum() else "_" for c in split).strip("_")
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() != 0)
  pictures = plots.write_run_report(
      exp, workdir, exp.eval_variables(state), writer, step, split=split,
      confusion_file=f"confusion_{safe_split}_step{step}.png",
      image_prefix=f"eval_{safe_split}/")
  writer.close()
  if jax.process_index() == 0:
    path = os.path.join(workdir, f"eval_{safe_split}_step{step}.json")
    with open(path, "w") as f:
      json.dump(results, f, indent=2)
    results["path"] = path
    results.update({f"{name}_path": p for name, p in pictures.items()})
  return results
