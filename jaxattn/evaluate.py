"""Evaluate a saved checkpoint on any split: ``main.py --mode=eval``."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
from absl import logging
from clu import metric_writers

from jaxattn import checkpointing, optim, parallel, plots, train
from jaxattn.data import pipeline


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
  saved = checkpointing.load_config(workdir)
  config = saved if config is None else config
  source = train.get_source(config)
  config = train.resolve_config(config, source)
  split = split or config.test_split or config.val_split
  if not split:
    raise ValueError("No split to evaluate: pass --split=NAME.")

  mesh = parallel.create_mesh()
  shard = pipeline.ProcessShard(
      jax.process_index(), jax.process_count(),
      parallel.check_batch_size(config.eval_batch_size, "eval_batch_size"))
  model = train.build_model(config)
  # The optimizer state is restored too (the checkpoint holds one); its
  # structure needs the schedule, not the data, so steps_per_epoch=1 is fine.
  tx = optim.create_optimizer(config, optim.create_learning_rate_fn(config, 1, 1))
  abstract_state = train.abstract_train_state(config, model, tx, mesh)
  ckpt = checkpointing.RunCheckpoints(workdir, read_only=True)
  state, _, step = ckpt.restore(abstract_state, checkpoint)
  ckpt.close()
  state_sharding = jax.tree.map(lambda x: x.sharding, abstract_state)
  eval_fn = train.make_eval_fn(model, mesh, state_sharding, config)
  results = train.evaluate_split(eval_fn, state, source, split, config, shard,
                                 mesh)
  results.update(split=split, step=step, checkpoint=str(checkpoint))
  logging.info("Eval of %s (step %d) on %s: %s", checkpoint, step, split,
               results)
  safe_split = "".join(c if c.isalnum() else "_" for c in split).strip("_")
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() != 0)
  pictures = plots.write_run_report(
      workdir, config, state.variables(), model, source, mesh, shard, writer,
      step, split=split, confusion_file=f"confusion_{safe_split}_step{step}.png",
      image_prefix=f"eval_{safe_split}/")
  writer.close()
  if jax.process_index() == 0:
    path = os.path.join(workdir, f"eval_{safe_split}_step{step}.json")
    with open(path, "w") as f:
      json.dump(results, f, indent=2)
    results["path"] = path
    results.update({f"{name}_path": p for name, p in pictures.items()})
  return results
