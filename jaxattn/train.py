"""The training loop: one function to read top to bottom.

``train_and_evaluate(config, workdir)`` trains ``config.model`` on
``config.dataset``, evaluates on the validation split every
``eval_every_epochs``, keeps the latest and the best checkpoints, and resumes
from ``workdir`` when it already holds a run: same step, optimizer state,
RNG and position in the data, so an interrupted run ends exactly where an
uninterrupted one would. Rerunning a finished run does nothing more (but
completes what an interrupted end left undone: the best checkpoint,
results.json).

One run at a time: the workdir is locked (``jaxattn.workdir_lock``) before
anything in it is written, and a resume must use the config the workdir was
started with (``check_same_run``; only ``RESUME_MAY_CHANGE``'s operational
keys may differ).

What is built (data, model, optimizer, mesh, compiled steps) comes from
``jaxattn.experiment.Experiment``; what happens between steps (logging,
validation, checkpoints, the non-finite-loss guard) from ``jaxattn.periodic``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import ml_collections
from absl import logging

# The input pipeline first: without TensorFlow (the data extra) this import
# is the error that names the extra. clu's writers import TensorFlow too.
from jaxattn.data import pipeline  # pylint: disable=g-bad-import-order
from clu import metric_writers, parameter_overview, periodic_actions

from jaxattn import (checkpointing, configlib, distributed, experiment,
                     feature_cache, optim, parallel, periodic, plots,
                     workdir_lock)
from jaxattn.models import kernels

RESULTS_FILE = "results.json"
TEST_CHECKPOINTS = ("best", "last")

# The config keys a resume may change: they change neither the weights a run
# trains nor the results it reports (which checkpoint is best, when it stops,
# what is tested), only how it is logged, saved, laid out on the devices,
# which kernels compute it (the same function, to float rounding) or where
# its data is read from. Every other key, and every key of
# config.model, config.optimizer, config.schedule, config.augment, ..., must
# match the workdir's config.json.
DEVICE_PREFETCH = 2
# Fewer examples per device than this and a GPU step is mostly launch
# overhead; the start-up log warns.
MIN_BATCH_PER_DEVICE = 8
RESUME_MAY_CHANGE = (
    "log_every_steps", "profile_steps", "wandb_project", "wandb_mode",
    "checkpoint_every_steps", "keep_checkpoints",
    "data_dir", "manual_dir", "download", "source_modules", "cache",
    "eval_batch_size", "sharding_rules", "fsdp_min_size_mb", "kernels",
    "matmul_precision", "reference_curve")


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, Any]:
  """Trains (or resumes) a run in `workdir`; returns its results."""
  workdir = os.path.abspath(workdir)
  _check_test_checkpoint(config)
  # Before anything in the workdir is written: one run at a time.
  with workdir_lock.WorkdirLock(workdir):
    # On a CPU host the mesh spans the device count measured fastest for
    # this model (probed once per model and host; jaxattn/cpu_layout.py).
    exp = experiment.Experiment(config, workdir=workdir, probe_layout=True)
    check_same_run(workdir, exp.config)
    writer = _create_writer(exp.config, workdir)
    ckpt = checkpointing.RunCheckpoints(workdir,
                                        keep=exp.config.keep_checkpoints)
    try:
      return _train(exp, ckpt, writer)
    finally:  # Also on errors: pending saves complete, files are closed.
      writer.close()
      ckpt.close()


def small_batch_warning(batch_size: int, num_devices: int,
                        platform: str) -> str | None:
  """What to do about fewer than MIN_BATCH_PER_DEVICE examples per
  accelerator (None when there are enough, and on CPUs, whose devices are
  cores that a small batch does not leave idle)."""
  per_device = batch_size // num_devices
  if per_device >= MIN_BATCH_PER_DEVICE or platform == "cpu":
    return None
  return (f"{per_device} examples per device (global batch {batch_size} "
          f"over {num_devices} devices) leave each accelerator mostly idle. "
          "config.batch_size is global (the seeds' numbers); raise it "
          f"(--config.batch_size={MIN_BATCH_PER_DEVICE * num_devices}, with "
          "--config.scale_lr_with_batch=True to scale the learning rates "
          "linearly) or train on fewer devices.")


def _train(exp: experiment.Experiment, ckpt: checkpointing.RunCheckpoints,
           writer) -> dict[str, Any]:
  config, workdir, total_steps = exp.config, exp.workdir, exp.total_steps
  per_device = config.batch_size // exp.mesh.size
  logging.info("Devices: %d (%d per process, %d processes); compute dtype "
               "%s, matmul precision %s; batch %d (%d per device); %s.",
               exp.mesh.size, exp.mesh.size // jax.process_count(),
               jax.process_count(), config.compute_dtype,
               config.get("matmul_precision", "default"), config.batch_size,
               per_device, exp.kernels.describe())
  warning = small_batch_warning(config.batch_size, exp.mesh.size,
                                kernels.platform_of(exp.mesh))
  if warning:
    logging.warning("%s", warning)
  lr_scale = optim.lr_batch_scale(config)
  if lr_scale != 1.0:
    logging.info("Learning rates x%.4g (scale_lr_with_batch: batch %d / "
                 "reference %d).", lr_scale, config.batch_size,
                 config.reference_batch_size or config.batch_size)
  logging.info("Data %s: %s; %d steps/epoch, %d steps in all.",
               config.dataset, _split_sizes(exp), exp.steps_per_epoch,
               total_steps)

  # --- State: created directly in its sharded layout, or restored ----------
  # The newest intact checkpoint: a damaged one is moved aside (kept).
  restored = ckpt.restore_latest_intact(exp.abstract_state)
  if restored is not None:
    state, meta, start_step = restored
    record = periodic.RunRecord.from_meta(meta)
    logging.info("Resumed from %s at step %d.", ckpt.workdir, start_step)
    # Killed between the latest and the best save: the record names the
    # best step; re-save it before anything reads the best checkpoint.
    ckpt.repair_best(exp.abstract_state, record.best_step)
  else:
    state, record, start_step = exp.init_state(), periodic.RunRecord(), 0
  num_params = exp.num_params()
  if record.finished or start_step >= total_steps:
    if os.path.exists(os.path.join(workdir, RESULTS_FILE)):
      logging.info("Training in %s is already complete (step %d).", workdir,
                   start_step)
      _log_where_results_are(workdir)
      return _read_results(workdir)
    # Killed after its final checkpoint but before results.json.
    logging.warning("Training in %s is complete (step %d) but has no %s: "
                    "running its final evaluation.", workdir, start_step,
                    RESULTS_FILE)
    return _finish(exp, ckpt, writer, record, state, start_step, num_params)
  # The resume check has passed (same config, a checkpoint that restores):
  # only now is config.json (re)written.
  checkpointing.save_config(workdir, config)
  logging.info("Model %s: %s parameters.", config.model.name,
               f"{num_params:,}")
  if distributed.is_chief():
    parameter_overview.log_parameter_overview(state.params)
    writer.write_hparams({k: v for k, v in _flat(config.to_dict()).items()
                          if isinstance(v, (int, float, str, bool))})

  # --- Input: resumes at the exact position of start_step --------------------
  if config.cache_backbone_features:
    exp = feature_cache.build(exp, state.variables(), workdir)
  # Global arrays on the mesh, DEVICE_PREFETCH batches ahead of the step
  # that takes them: their host-to-device copies overlap the steps before.
  batches = parallel.prefetch_to_mesh(
      pipeline.as_numpy(exp.train_dataset(start_step)), exp.batch_sharding,
      size=DEVICE_PREFETCH)

  # --- What runs between steps ------------------------------------------------
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=total_steps, writer=writer,
      every_steps=config.log_every_steps, every_secs=None)
  profile = _profiler(config, workdir)
  guard = periodic.NonFiniteGuard(ckpt, config, start_step)
  train_log = periodic.TrainLog(exp, writer, start_step)
  epoch_log = periodic.EpochLog(exp, writer, start_step,
                                partial_epoch=record.partial_epoch)
  # Each step's metrics reach the logs on the host a few steps after its
  # dispatch: the host never runs far ahead of the devices (dispatch.py).
  step_metrics = periodic.StepMetrics(train_log, epoch_log)
  validation = periodic.Validation(exp, writer, record, report_progress)
  saving = periodic.Checkpointing(exp, ckpt, record)
  preemption = distributed.PreemptionWatch()

  # --- Loop -------------------------------------------------------------------
  step, preempted = start_step, False
  logging.info("Training from step %d to %d.", start_step, total_steps)
  while step < total_steps:
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      state, metrics = exp.train_fn(state, next(batches))
    step += 1
    step_metrics.add(metrics)
    report_progress(step)
    if profile is not None:
      profile(step)
    epoch = math.ceil(step / exp.steps_per_epoch)
    end_of_epoch = step % exp.steps_per_epoch == 0 or step == total_steps
    # Every process asks every step; all see the preemption at one step.
    preempted = step < total_steps and preemption.should_stop(step)
    evaluate = validation.due(step, epoch, end_of_epoch)
    # Before anything is logged, evaluated or saved: a diverged state is
    # never kept (logging pulls the metrics to the host anyway).
    if (train_log.due(step) or end_of_epoch or preempted or
        saving.periodic(step)):
      step_metrics.flush()  # Every step's metrics, up to this one.
      guard.check(train_log.take_unchecked(), step)
    if train_log.due(step):
      train_log(step)
    if end_of_epoch:
      epoch_log.end_training(step, epoch)
    is_best = validation(step, epoch, state) if evaluate else False
    if end_of_epoch:
      epoch_log.write_row(step, epoch, validation.last if evaluate else None)
    stop_early = validation.should_stop()
    finished = step == total_steps or stop_early
    if saving.due(step, end_of_epoch=end_of_epoch, evaluated=evaluate,
                  finished=finished, preempted=preempted):
      record.epoch, record.finished = epoch, finished
      record.stopped_early = stop_early
      # Mid-epoch: the epoch's train metrics so far, for a resume.
      record.partial_epoch = (None if end_of_epoch else
                              epoch_log.partial(step))
      saving(step, state, best=is_best)
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
      epoch_log.restart(step)

  # --- Final evaluation --------------------------------------------------------
  preemption.close()
  ckpt.wait()
  if preempted:  # Not finished: no test evaluation and no results.json.
    return dict(preempted=True, final_step=step)
  return _finish(exp, ckpt, writer, record, state, step, num_params)


def _finish(exp: experiment.Experiment, ckpt: checkpointing.RunCheckpoints,
            writer, record: periodic.RunRecord, state, step: int,
            num_params: int) -> dict[str, Any]:
  """The final test evaluation, run report and results.json of a finished
  run whose checkpoints are all saved (results.json comes last: its
  presence says the run is complete)."""
  config, workdir = exp.config, exp.workdir
  results = dict(final_step=step, best_step=record.best_step,
                 best_val=record.best_metric,
                 stopped_early=record.stopped_early, num_params=num_params,
                 val=record.history[-1] if record.history else None)
  # The test split, and the run report, on config.test_checkpoint.
  state, test_step = _test_state(exp, ckpt, record, state, step)
  results["test_checkpoint"] = dict(step=test_step,
                                    which="best" if test_step == record.best_step
                                    else "last")
  if config.test_split:
    results["test"] = exp.evaluate(state, config.test_split)
    writer.write_scalars(step, {f"test_{k}": v
                                for k, v in results["test"].items()})
    logging.info("Test (%s) on the %s checkpoint (step %d): %s",
                 config.test_split, results["test_checkpoint"]["which"],
                 test_step, results["test"])
  # curves.png and confusion_matrix.png (test split, else validation), also
  # as TensorBoard images. Every process takes part in the predictions.
  plots.write_run_report(exp, workdir, exp.eval_variables(state), writer,
                         test_step)
  if distributed.is_chief():  # Whole or absent, even if killed meanwhile.
    path = os.path.join(workdir, RESULTS_FILE)
    with open(path + ".tmp", "w") as f:
      json.dump(results, f, indent=2)
    os.replace(path + ".tmp", path)
  _log_where_results_are(workdir)
  return results


def _test_state(exp, ckpt, record: periodic.RunRecord, state, step: int):
  """(state, its step) for the final test: the best checkpoint when
  config.test_checkpoint is "best" and there is one, else the last state."""
  if (exp.config.test_checkpoint == "best" and record.best_step is not None
      and record.best_step != step and ckpt.best_step() == record.best_step):
    best_state, _, best_step = exp.restore("best", checkpoints=ckpt)
    return best_state, best_step
  return state, step


def _check_test_checkpoint(config: ml_collections.ConfigDict) -> None:
  if config.test_checkpoint not in TEST_CHECKPOINTS:
    raise configlib.ConfigError(
        f"config.test_checkpoint={config.test_checkpoint!r} must be one of "
        f"{TEST_CHECKPOINTS}: --config.test_checkpoint=last tests the final "
        "state, =best the best validation checkpoint.")


def _profiler(config: ml_collections.ConfigDict, workdir: str):
  """config.profile_steps = (first, count): a jax.profiler trace of those
  steps in WORKDIR/plugins/profile (TensorBoard's profile plugin)."""
  first, count = (int(x) for x in config.get("profile_steps", (0, 0)))
  if count <= 0:
    return None
  if first < 1:
    raise configlib.ConfigError(
        f"config.profile_steps={tuple(config.profile_steps)}: the first "
        "traced step must be >= 1, e.g. (10, 5).")
  return periodic_actions.Profile(
      logdir=workdir, first_profile=first, num_profile_steps=count,
      profile_duration_ms=None, every_steps=None, every_secs=None)


def _create_writer(config: ml_collections.ConfigDict, workdir: str):
  """TensorBoard (and the log) on process 0; wandb too when configured."""
  writer = metric_writers.create_default_writer(
      workdir, just_logging=not distributed.is_chief(), asynchronous=True)
  if not (config.get("wandb_project") and distributed.is_chief()):
    return writer
  from jaxattn import wandb_writer  # pylint: disable=g-import-not-at-top
  wandb = wandb_writer.WandbWriter(
      workdir, project=config.wandb_project,
      mode=config.get("wandb_mode", "online"))
  return metric_writers.MultiWriter([writer, metric_writers.AsyncWriter(wandb)])


def _read_results(workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, RESULTS_FILE)
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {}


def check_same_run(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuses to resume (or rerun) a workdir with a config of another meaning.

  Every key of the resolved config is compared with the workdir's
  config.json, except ``RESUME_MAY_CHANGE``. Nothing is written: config.json
  is rewritten only once the resume has passed this and the restore.
  """
  path = os.path.join(workdir, checkpointing.CONFIG_FILE)
  if not os.path.exists(path):
    return
  saved = _flat(_json_ready(checkpointing.load_config(workdir).to_dict()))
  new = _flat(_json_ready(config.to_dict()))
  # A model option added since the run started: its default was used.
  saved.update(_flat({"model": _with_defaults(
      {k[len("model."):]: v for k, v in saved.items()
       if k.startswith("model.")})}))
  new.update(_flat({"model": _with_defaults(
      {k[len("model."):]: v for k, v in new.items()
       if k.startswith("model.")})}))
  defaults = _flat(_json_ready(configlib.base_config().to_dict()))
  differences = []
  for key in sorted(set(saved) | set(new)):
    if key.split(".")[0] in RESUME_MAY_CHANGE:
      continue
    # A key added to the trainer since the run started: it had its default.
    old_value = saved.get(key, defaults.get(key))
    new_value = new.get(key, defaults.get(key))
    if json.dumps(old_value) != json.dumps(new_value):
      differences.append(f"config.{key}: {old_value!r} in {path}, "
                         f"{new_value!r} now")
  if differences:
    raise configlib.ConfigError(
        f"{workdir} holds a run with another config; resuming (or "
        "rerunning) it with this one would change what it trains:\n  " +
        "\n  ".join(differences) + "\nResume it with its own config (drop "
        "those overrides; the saved one is config.json), or use a new "
        "--workdir for a new run. Only these keys may change on a resume: "
        f"{', '.join(RESUME_MAY_CHANGE)}.")


def _json_ready(value: Any) -> Any:
  """Tuples as lists, as config.json holds them."""
  return json.loads(json.dumps(value, default=list))


def _with_defaults(model: dict[str, Any]) -> dict[str, Any]:
  """config.model with every constructor option the module has (defaults
  for those it does not name), so that two spellings of one model match."""
  from jaxattn.models import get_model_class  # pylint: disable=g-import-not-at-top
  try:
    fields = get_model_class(model["name"]).__dataclass_fields__
  except (ValueError, KeyError, AttributeError):
    return model
  defaults = {k: f.default for k, f in fields.items()
              if k not in ("parent", "name", "num_classes", "dtype")
              and isinstance(f.default, (int, float, str, bool, type(None)))}
  return {**defaults, **model}


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _split_sizes(exp: experiment.Experiment) -> str:
  """"train 1,294 examples (train[:90%]), val 144 (...), test 359 (test)"."""
  parts = []
  for role in ("train", "val", "test"):
    split = exp.config[f"{role}_split"]
    if not split:
      continue
    try:
      count = (exp.num_train_examples if role == "train"
               else exp.source.num_examples(split))
    except ValueError:  # DatasetError; the run checks its own splits.
      continue
    examples = " examples" if role == "train" else ""
    parts.append(f"{role} {count:,}{examples} ({split})")
  return ", ".join(parts)


def _log_where_results_are(workdir: str) -> None:
  """The last line of a run: what it wrote, and where."""
  names = (RESULTS_FILE, periodic.METRICS_FILE, plots.CURVES_FILE,
           plots.CONFUSION_FILE, checkpointing.LATEST_DIR + "/",
           checkpointing.BEST_DIR + "/")
  found = [n for n in names if os.path.exists(os.path.join(workdir, n))]
  logging.info("Results in %s: %s (TensorBoard: tensorboard --logdir %s).",
               workdir, ", ".join(found), workdir)
