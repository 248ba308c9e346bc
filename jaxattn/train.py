"""The training loop: one function to read top to bottom.

``train_and_evaluate(config, workdir)`` trains ``config.model`` on
``config.dataset``, evaluates on the validation split every
``eval_every_epochs``, keeps the latest and the best checkpoints, and resumes
from ``workdir`` when it already holds a run: same step, optimizer state,
RNG and position in the data, so an interrupted run ends exactly where an
uninterrupted one would. Rerunning a finished run does nothing more.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions

from jaxattn import (checkpointing, configlib, distributed, feature_cache,
                     optim, parallel, plots, pretrained, steps)
from jaxattn.data import pipeline, sources
from jaxattn.models import create_model

RESULTS_FILE = "results.json"


# ----------------------------------------------------------------------------
# Building blocks shared with evaluation and `jaxattn.load`.
# ----------------------------------------------------------------------------
def get_source(config: ml_collections.ConfigDict) -> sources.DataSource:
  return sources.get_source(config.dataset, data_dir=config.data_dir or None,
                            manual_dir=config.manual_dir or None,
                            download=config.download)


def resolve_config(config: ml_collections.ConfigDict,
                   source: sources.DataSource, *,
                   check_splits: bool = True) -> ml_collections.ConfigDict:
  """Fills what the dataset decides (classes, channels) and checks the rest.

  ``check_splits=False`` skips the split checks, for callers that only have
  the dataset's metadata (``jaxattn.summary``).
  """
  config = ml_collections.ConfigDict(config.to_dict())  # Never edit the caller's.
  configlib.check_duration(config)
  if not config.num_classes:
    config.num_classes = source.num_classes
  elif config.num_classes < source.num_classes:
    raise ValueError(
        f"config.num_classes={config.num_classes} but {source.name} has "
        f"{source.num_classes} classes; set --config.num_classes=0 to use the "
        "dataset's count.")
  with config.unlocked():
    config.num_channels = source.image_shape[2]
    config.class_names = list(source.class_names)
  if not check_splits:
    pass
  elif config.test_split and not source.has_split(config.test_split):
    # A folder of training images has no test split; say so, don't fail.
    logging.warning("config.test_split=%r is not a split of %s (splits: %s); "
                    "the final test evaluation is skipped.", config.test_split,
                    source.name, source.split_names)
    config.test_split = ""
  for split_key in ("train_split", "val_split") if check_splits else ():
    if config[split_key]:
      try:
        source.num_examples(config[split_key])
      except sources.DatasetError as e:
        raise sources.DatasetError(
            f"config.{split_key}={config[split_key]!r}: {e}") from None
  if len(config.image_size) != 2 or min(config.image_size) <= 0:
    raise ValueError(f"config.image_size must be (height, width), got "
                     f"{config.image_size}.")
  channels = config.num_channels
  for key in ("pixel_mean", "pixel_std"):
    if len(config[key]) not in (1, channels):
      raise ValueError(f"config.{key} has {len(config[key])} values; "
                       f"{source.name} images have {channels} channel(s).")
  return config


def build_model(config: ml_collections.ConfigDict):
  """The registered model, with the classes and compute dtype of the config."""
  kwargs = dict(config.model)
  name = kwargs.pop("name")
  return create_model(name, num_classes=config.num_classes,
                      dtype=jnp.dtype(config.compute_dtype), **kwargs)


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  return (*config.image_size, config.num_channels)


def abstract_train_state(config, model, tx, mesh):
  """Shapes of the state, each leaf carrying its sharding.

  Shardings follow config.sharding_rules (replicated, or FSDP over the data
  axis). Checkpoints are restored onto these, so a run saved on one mesh
  resumes on a mesh of another size.
  """
  create = functools.partial(steps.create_train_state, model=model, tx=tx,
                             image_shape=image_shape(config))
  shapes = jax.eval_shape(create, jax.random.key_data(jax.random.key(0)))
  shardings = parallel.state_shardings(
      shapes, mesh, rules=config.get("sharding_rules", parallel.DEFAULT_RULES),
      fsdp_min_size_mb=config.get("fsdp_min_size_mb", 4.0))
  if config.parallel == "pmap" and not parallel.is_replicated(shardings):
    raise ValueError(
        "config.parallel='pmap' runs one program per device on a full copy "
        "of the state, so config.sharding_rules cannot shard it (FSDP); use "
        "--config.parallel=jit with FSDP rules.")
  return jax.tree.map(
      lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                               sharding=sharding),
      shapes, shardings)


def make_eval_fn(model, mesh, state_sharding, config):
  return jax.jit(functools.partial(steps.eval_step, model=model,
                                   loss_spec=steps.LossSpec.from_config(config)),
                 in_shardings=(state_sharding, parallel.batch_sharded(mesh)),
                 out_shardings=parallel.replicated(mesh))


def evaluate_split(eval_fn, state, source, split, config, shard, mesh
                   ) -> dict[str, float]:
  """Metrics over every example of `split` exactly once."""
  ds, num_batches = pipeline.create_eval_dataset(source, split, config,
                                                 shard=shard)
  sharding = parallel.batch_sharded(mesh)
  total = None
  for batch in pipeline.as_numpy(ds):
    batch_metrics = eval_fn(state, parallel.global_batch(batch, sharding))
    total = batch_metrics if total is None else total.merge(batch_metrics)
  results = {k: float(v) for k, v in total.compute().items()}
  results["num_examples"] = int(total.loss.count)
  results["num_batches"] = num_batches
  return results


def _improved(value: float, best: float | None, metric: str) -> bool:
  if best is None:
    return True
  return value < best if metric == "loss" else value > best


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------
def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, Any]:
  """Trains (or resumes) a run in `workdir`; returns its results."""
  workdir = os.path.abspath(workdir)
  is_chief = distributed.is_chief()

  # --- Data source and the config it resolves ------------------------------
  source = get_source(config)
  config = resolve_config(config, source)
  pretrained.check(config)
  feature_cache.check(config)
  _check_same_run(workdir, config)
  checkpointing.save_config(workdir, config)

  writer = metric_writers.create_default_writer(
      workdir, just_logging=not is_chief, asynchronous=True)

  # --- Mesh and batch shares ----------------------------------------------
  mesh = parallel.create_mesh()
  shard = pipeline.ProcessShard(
      jax.process_index(), jax.process_count(),
      parallel.check_batch_size(config.batch_size))
  eval_shard = pipeline.ProcessShard(
      jax.process_index(), jax.process_count(),
      parallel.check_batch_size(config.eval_batch_size, "eval_batch_size"))
  num_train = source.num_examples(config.train_split)
  steps_per_epoch = num_train // config.batch_size
  if not steps_per_epoch:
    raise ValueError(
        f"config.batch_size={config.batch_size} exceeds the {num_train} "
        f"examples of {config.train_split!r}; lower --config.batch_size.")
  total_steps = config.num_steps or config.num_epochs * steps_per_epoch
  num_epochs = math.ceil(total_steps / steps_per_epoch)
  logging.info("Devices: %d (%d per process, %d processes); %s: %d examples, "
               "%d steps/epoch, %d steps in all.", jax.device_count(),
               jax.local_device_count(), jax.process_count(),
               config.train_split, num_train, steps_per_epoch, total_steps)

  # --- Model and optimizer -------------------------------------------------
  model = build_model(config)
  learning_rate_fn = optim.create_learning_rate_fn(config, steps_per_epoch,
                                                   total_steps)
  tx = optim.create_optimizer(config, learning_rate_fn)

  # --- State: created directly in its sharded layout, or restored ----------
  abstract_state = abstract_train_state(config, model, tx, mesh)
  state_sharding = jax.tree.map(lambda x: x.sharding, abstract_state)
  ckpt = checkpointing.RunCheckpoints(workdir, keep=config.keep_checkpoints)
  meta = dict(epoch=0, best_metric=None, best_step=None, evals_since_best=0,
              finished=False, stopped_early=False, history=[])
  if ckpt.latest_step() is not None:
    state, meta, start_step = ckpt.restore(abstract_state, "latest")
    logging.info("Resumed from %s at step %d.", ckpt.workdir, start_step)
  else:
    init = jax.jit(functools.partial(steps.create_train_state, model=model,
                                     tx=tx, image_shape=image_shape(config)),
                   out_shardings=state_sharding)
    state = init(jax.random.key_data(jax.random.key(config.seed)))
    if config.init_from:
      params, stats = pretrained.load(config, jax.device_get(state.params),
                                      jax.device_get(state.batch_stats))
      state = state.replace(
          params=jax.device_put(params, state_sharding.params),
          batch_stats=jax.device_put(stats, state_sharding.batch_stats))
      logging.info("Initialised from %s.", config.init_from)
    start_step = 0
  if meta["finished"] or start_step >= total_steps:
    logging.info("Training in %s is already complete (step %d).", workdir,
                 start_step)
    ckpt.close()
    writer.close()
    return _read_results(workdir)

  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("Model %s: %s parameters.", config.model.name,
               f"{num_params:,}")
  if is_chief:
    parameter_overview.log_parameter_overview(state.params)
    writer.write_hparams({k: v for k, v in _flat(config.to_dict()).items()
                          if isinstance(v, (int, float, str, bool))})

  # --- Compiled steps --------------------------------------------------------
  batch_sharding = parallel.batch_sharded(mesh)
  train_fn = jax.jit(
      functools.partial(steps.train_step, model=model, tx=tx,
                        learning_rate_fn=learning_rate_fn,
                        loss_spec=steps.LossSpec.from_config(config),
                        parallel=config.parallel, mesh=mesh),
      in_shardings=(state_sharding, batch_sharding),
      out_shardings=(state_sharding, parallel.replicated(mesh)),
      donate_argnums=0)
  eval_fn = make_eval_fn(model, mesh, state_sharding, config)

  # --- Input: resumes at the exact position of start_step --------------------
  if config.cache_backbone_features:
    source = feature_cache.build(config, source, state.variables(), model,
                                 mesh, eval_shard, workdir)
  train_ds = pipeline.create_train_dataset(
      source, config, shard=shard, steps_per_epoch=steps_per_epoch,
      num_epochs=num_epochs, start_step=start_step)
  train_iter = pipeline.as_numpy(train_ds)

  # --- Loop -------------------------------------------------------------------
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=total_steps, writer=writer,
      every_steps=config.log_every_steps, every_secs=None)
  train_metrics = None
  step = start_step
  epoch_start, epoch_start_step = time.time(), start_step
  progress = _Progress(start_step, total_steps, steps_per_epoch,
                       config.batch_size)
  preemption = distributed.PreemptionWatch()
  preempted = False
  logging.info("Training from step %d to %d.", start_step, total_steps)
  while step < total_steps:
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      batch = parallel.global_batch(next(train_iter), batch_sharding)
      state, step_metrics = train_fn(state, batch)
    step += 1
    train_metrics = (step_metrics if train_metrics is None
                     else train_metrics.merge(step_metrics))
    report_progress(step)

    # Host sync only here: metrics are pulled every log_every_steps.
    if step % config.log_every_steps == 0 or step == total_steps:
      scalars = {f"train_{k}": v for k, v in train_metrics.compute().items()}
      writer.write_scalars(step, scalars)
      logging.info("%s", progress.line(step, scalars))
      train_metrics = None

    end_of_epoch = step % steps_per_epoch == 0 or step == total_steps
    epoch = math.ceil(step / steps_per_epoch)
    if end_of_epoch:  # Training time only: evaluation is not counted.
      seconds = time.time() - epoch_start
      images_per_second = ((step - epoch_start_step) * config.batch_size /
                           seconds)
      writer.write_scalars(step, {"epoch_seconds": seconds,
                                  "images_per_second": images_per_second})
      logging.info("Epoch %d: %.1f s of training (%.0f images/s).", epoch,
                   seconds, images_per_second)
    evaluate_now = end_of_epoch and config.val_split and (
        epoch % config.eval_every_epochs == 0 or step == total_steps)
    is_best = False
    if evaluate_now:
      with report_progress.timed("eval"):
        val = evaluate_split(eval_fn, state, source, config.val_split, config,
                             eval_shard, mesh)
      writer.write_scalars(step, {f"val_{k}": v for k, v in val.items()})
      logging.info("Epoch %d, step %d: val %s", epoch, step,
                   json.dumps({k: round(v, 5) for k, v in val.items()}))
      value = val[config.best_metric]
      is_best = _improved(value, meta["best_metric"], config.best_metric)
      if is_best:
        meta.update(best_metric=value, best_step=step, evals_since_best=0)
      else:
        meta["evals_since_best"] += 1
      meta["history"].append(dict(step=step, epoch=epoch, **val))
    stop_early = bool(config.early_stopping_patience and
                      meta["evals_since_best"] >= config.early_stopping_patience)
    finished = step == total_steps or stop_early
    periodic = (config.checkpoint_every_steps and
                step % config.checkpoint_every_steps == 0)
    # Every process asks every step; all see the preemption at one step.
    preempted = not finished and preemption.should_stop(step)
    if evaluate_now or periodic or finished or preempted or (
        end_of_epoch and not config.val_split):
      meta.update(epoch=epoch, finished=finished, stopped_early=stop_early)
      ckpt.save(step, state, meta, best=is_best)
    if preempted:
      logging.warning("Preempted: saved step %d of %d in %s; rerun the same "
                      "command to resume.", step, total_steps, ckpt.workdir)
      break
    if stop_early:
      logging.info("Early stopping at step %d: no better val %s in %d "
                   "evaluations.", step, config.best_metric,
                   config.early_stopping_patience)
      break
    if end_of_epoch:
      epoch_start, epoch_start_step = time.time(), step

  # --- Final evaluation --------------------------------------------------------
  preemption.close()
  ckpt.wait()
  if preempted:  # Not finished: no test evaluation and no results.json.
    writer.close()
    ckpt.close()
    return dict(preempted=True, final_step=step)
  results = dict(final_step=step, best_step=meta["best_step"],
                 best_val=meta["best_metric"], stopped_early=meta["stopped_early"],
                 num_params=num_params,
                 val=meta["history"][-1] if meta["history"] else None)
  if config.test_split:
    results["test"] = evaluate_split(eval_fn, state, source, config.test_split,
                                     config, eval_shard, mesh)
    writer.write_scalars(step, {f"test_{k}": v
                                for k, v in results["test"].items()})
    logging.info("Test (%s) at step %d: %s", config.test_split, step,
                 results["test"])
  # curves.png and confusion_matrix.png (test split, else validation), also
  # as TensorBoard images. Every process takes part in the predictions.
  plots.write_run_report(workdir, config, state.variables(), model, source,
                         mesh, eval_shard, writer, step)
  writer.close()
  ckpt.close()
  if is_chief:
    with open(os.path.join(workdir, RESULTS_FILE), "w") as f:
      json.dump(results, f, indent=2)
  return results


class _Progress:
  """One readable line per log interval: where we are, how fast, how long."""

  def __init__(self, start_step: int, total_steps: int, steps_per_epoch: int,
               batch_size: int):
    self._total, self._per_epoch = total_steps, steps_per_epoch
    self._batch = batch_size
    self._last_step, self._last_time = start_step, time.time()
    self._start_step, self._start_time = start_step, self._last_time

  def line(self, step: int, scalars: dict[str, Any]) -> str:
    now = time.time()
    interval_rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    # The ETA uses the whole run's rate: the first interval pays compilation.
    run_rate = (step - self._start_step) / max(now - self._start_time, 1e-9)
    self._last_step, self._last_time = step, now
    eta = (self._total - step) / max(run_rate, 1e-9)
    epoch = (step - 1) // self._per_epoch + 1
    epochs = math.ceil(self._total / self._per_epoch)
    return (f"epoch {epoch}/{epochs} step {step}/{self._total} "
            f"({100 * step / self._total:.0f}%) | loss "
            f"{float(scalars['train_loss']):.4f} acc "
            f"{float(scalars['train_accuracy']):.4f} lr "
            f"{float(scalars['train_learning_rate']):.3g} | "
            f"{interval_rate * self._batch:,.0f} img/s | ETA "
            f"{_duration(eta)}")


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m"
  return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _read_results(workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, RESULTS_FILE)
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {}


def _check_same_run(workdir: str, config: ml_collections.ConfigDict) -> None:
  """A workdir belongs to one model; resuming another would corrupt it."""
  path = os.path.join(workdir, checkpointing.CONFIG_FILE)
  if not os.path.exists(path):
    return
  saved = checkpointing.load_config(workdir)
  for key in ("model", "num_classes", "image_size", "dataset"):
    old, new = saved.get(key), config.get(key)
    old = old.to_dict() if hasattr(old, "to_dict") else old
    new = new.to_dict() if hasattr(new, "to_dict") else new
    if json.dumps(old, sort_keys=True) != json.dumps(new, sort_keys=True,
                                                     default=list):
      raise ValueError(
          f"{workdir} holds a run with config.{key}={old!r}, but this run has "
          f"{new!r}. Resume it with its own config, or use a new --workdir.")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out
