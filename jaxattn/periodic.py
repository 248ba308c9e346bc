"""The training loop's periodic actions, each named for what it does.

After every train step the loop (``jaxattn/train.py``) hands the step's
metrics to ``StepMetrics``, which brings them to the host a few steps later
(``jaxattn/dispatch.py``) for ``TrainLog`` and ``EpochLog``, then asks each
action whether it is due and runs it:

* ``NonFiniteGuard``: before anything is logged, evaluated or saved, stops the
  run if a loss went NaN or inf, naming the first bad step, so no checkpoint
  ever holds a diverged state;
* ``TrainLog``: every ``log_every_steps``, the train metrics to the writer
  and one readable progress line;
* ``EpochLog``: at the end of an epoch, its training seconds and images/s,
  and one row of ``WORKDIR/metrics.csv`` (train and validation loss and
  accuracy, learning rate, seconds), like the seeds' own CSV logs;
* ``Validation``: every ``eval_every_epochs`` epochs, the validation metrics,
  the best one so far and early stopping;
* ``Checkpointing``: when to save the latest (and the best) checkpoint.

``RunRecord`` is what a checkpoint's ``meta`` holds, so a resumed run
continues the same best-metric and early-stopping bookkeeping, and the same
epoch's train means.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import pathlib
import time
from typing import Any

import flax
import jax
import numpy as np
from absl import logging

from jaxattn import dispatch
from jaxattn.errors import BadInputError

METRICS_FILE = "metrics.csv"
METRICS_COLUMNS = ("epoch", "step", "train_loss", "train_accuracy",
                   "val_loss", "val_accuracy", "learning_rate",
                   "epoch_seconds")


class NonFiniteLossError(BadInputError, FloatingPointError):
  """A train loss was NaN or inf; the message names the step and the fix."""


@dataclasses.dataclass
class RunRecord:
  """The bookkeeping a checkpoint carries beside the state (its ``meta``)."""

  epoch: int = 0
  best_metric: float | None = None
  best_step: int | None = None
  evals_since_best: int = 0
  finished: bool = False
  stopped_early: bool = False
  history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  # Saved mid-epoch (preemption, checkpoint_every_steps): the epoch's train
  # metrics so far, so that the resumed run's metrics.csv row still covers
  # the whole epoch. EpochLog.partial() writes it; None at an epoch's end.
  partial_epoch: dict[str, Any] | None = None

  @classmethod
  def from_meta(cls, meta: dict[str, Any]) -> "RunRecord":
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in meta.items() if k in names})

  def as_meta(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


_merge = dispatch.merge


class StepMetrics:
  """The train steps' metrics, on their way to the host.

  Each step's metrics stay on the devices while the step runs; ``add``
  takes them right after its dispatch and hands those of the steps that
  left the dispatch window (``jaxattn/dispatch.py``: at most two steps in
  flight) to the logs, as NumPy. ``flush`` waits for the last step and
  hands over the rest: the loop calls it before anything reads the logs'
  metrics (logging, the non-finite check, an epoch's end, a save).
  """

  def __init__(self, *logs):
    self._window = dispatch.Window()
    self._logs = logs

  def add(self, step_metrics) -> None:
    self._hand_over(self._window.push(step_metrics))

  def flush(self) -> None:
    self._hand_over(self._window.drain())

  def _hand_over(self, host_metrics) -> None:
    for metrics in host_metrics:
      for log in self._logs:
        log.add(metrics)


class NonFiniteGuard:
  """Stops the run at the first non-finite loss, before it is saved."""

  def __init__(self, checkpoints, config=None, start_step: int = 0):
    self._checkpoints = checkpoints
    self._config = config
    self._checked_step = start_step  # A resumed run checks from here on.

  def check(self, metrics, step: int) -> None:
    """``metrics``: the train metrics merged since the last check."""
    if metrics is None:
      return
    bad_step = int(metrics.first_nonfinite_step.compute())
    if bad_step:
      self._checkpoints.wait()  # Earlier saves complete; nothing new saved.
      latest = self._checkpoints.latest_step()
      best = self._checkpoints.best_step()
      resume = (f"The last checkpoint is step {latest} (best: {best}); "
                "rerunning the same command resumes from it."
                if latest is not None else "No checkpoint was saved yet.")
      raise NonFiniteLossError(
          f"The train loss became NaN or inf at step {bad_step} (checked "
          f"steps {self._checked_step + 1}-{step}); training stopped without "
          f"saving. {resume} {self._advice()}")
    self._checked_step = step

  def _advice(self) -> str:
    """The remedies the config does not already use."""
    remedies = ["lower the learning rate (config.schedule.lr)"]
    config = self._config
    if config is None or not config.get("grad_clip_norm", 0.0):
      remedies.append("clip gradients (--config.grad_clip_norm=1.0)")
    if config is None or config.get("compute_dtype", "float32") != "float32":
      remedies.append("train in float32 (--config.compute_dtype=float32)")
    text = ", ".join(remedies[:-1]) + (" or " if len(remedies) > 1 else "")
    return (text + remedies[-1]).capitalize() + "."


class TrainLog:
  """Every ``log_every_steps`` and at the last step: train scalars + a line.

  ``add`` takes each step's metrics on the host (from ``StepMetrics``) and
  merges them there.
  """

  def __init__(self, exp, writer, start_step: int):
    self._every = exp.config.log_every_steps
    self._total = exp.total_steps
    self._per_epoch = exp.steps_per_epoch
    self._batch = exp.config.batch_size
    self._writer = writer
    self.metrics = None  # Merged since the last log.
    self.unchecked = None  # Merged since the last NonFiniteGuard check.
    self._last_step, self._last_time = start_step, time.time()
    self._start_step, self._start_time = start_step, self._last_time

  def add(self, step_metrics) -> None:
    self.metrics = _merge(self.metrics, step_metrics)
    self.unchecked = _merge(self.unchecked, step_metrics)

  def take_unchecked(self):
    """The metrics since the last guard check, for ``NonFiniteGuard``."""
    unchecked, self.unchecked = self.unchecked, None
    return unchecked

  def due(self, step: int) -> bool:
    return step % self._every == 0 or step == self._total

  def __call__(self, step: int) -> None:
    scalars = {f"train_{k}": v for k, v in self.metrics.compute().items()
               if k != "first_nonfinite_step"}
    self._writer.write_scalars(step, scalars)
    logging.info("%s", self._line(step, scalars))
    self.metrics = None

  def _line(self, step: int, scalars: dict[str, Any]) -> str:
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
            f"{duration(eta)}")


class EpochLog:
  """The end of each epoch: its training seconds and images/s (evaluation
  not counted) to the writer, and a row of ``WORKDIR/metrics.csv``.

  A row holds the epoch's mean train loss and accuracy, the validation loss
  and accuracy (empty in epochs without validation), the learning rate of
  its last step (what the seeds log at the end of an epoch) and its seconds.
  A resumed run first drops the rows after its checkpoint, so the file
  describes one run. A checkpoint saved mid-epoch carries the epoch's train
  metrics and seconds so far (``partial()`` -> ``RunRecord.partial_epoch``),
  and the resumed run merges them in, so the row of the epoch it resumed in
  covers the whole epoch. Process 0 writes it.
  """

  def __init__(self, exp, writer, start_step: int,
               partial_epoch: dict[str, Any] | None = None):
    self._batch, self._writer = exp.config.batch_size, writer
    self._path = (pathlib.Path(exp.workdir) / METRICS_FILE
                  if exp.workdir and jax.process_index() == 0 else None)
    self._drop_rows_after(start_step)
    self._metrics, self._seconds = None, 0.0  # The epoch's, merged.
    self.restart(start_step)
    # The interrupted epoch's metrics, as saved; turned back into a metrics
    # object (shaped like the step metrics) at the first step.
    self._carried = None
    if partial_epoch and partial_epoch.get("step") == start_step:
      self._carried = partial_epoch
      self._earlier_seconds = float(partial_epoch.get("seconds", 0.0))
      self._start_step = int(partial_epoch.get("epoch_start_step",
                                               start_step))

  def restart(self, step: int) -> None:
    self._start, self._start_step = time.time(), step
    self._earlier_seconds = 0.0  # Training seconds before a resume.

  def add(self, step_metrics) -> None:
    """A step's metrics, on the host (from ``StepMetrics``)."""
    if self._carried is not None:
      self._metrics = _metrics_from_state(step_metrics,
                                          self._carried["metrics"])
      self._carried = None
    self._metrics = _merge(self._metrics, step_metrics)

  def partial(self, step: int) -> dict[str, Any] | None:
    """The epoch so far, for a checkpoint saved before its end (JSON)."""
    if self._metrics is None:
      return None
    return dict(step=step, epoch_start_step=self._start_step,
                seconds=self._earlier_seconds + time.time() - self._start,
                metrics=_metrics_to_state(self._metrics))

  def end_training(self, step: int, epoch: int) -> None:
    """At the epoch's last step, before validation: its training time."""
    self._seconds = self._earlier_seconds + time.time() - self._start
    images_per_second = (step - self._start_step) * self._batch / self._seconds
    self._writer.write_scalars(step, {"epoch_seconds": self._seconds,
                                      "images_per_second": images_per_second})
    # --verbosity=1: the progress line has the rate already.
    logging.debug("Epoch %d: %.1f s of training (%.0f images/s).", epoch,
                  self._seconds, images_per_second)

  def write_row(self, step: int, epoch: int,
                val: dict[str, float] | None) -> None:
    """After validation (``val``: its metrics, or None): the CSV row."""
    merged, self._metrics = self._metrics, None
    train = ({k: float(v) for k, v in merged.compute().items()}
             if merged is not None else {})
    if self._path is None:
      return
    val = val or {}
    row = dict(epoch=epoch, step=step, train_loss=train.get("loss"),
               train_accuracy=train.get("accuracy"), val_loss=val.get("loss"),
               val_accuracy=val.get("accuracy"),
               learning_rate=train.get("learning_rate"),
               epoch_seconds=round(self._seconds, 2))
    new_file = not self._path.exists()
    with self._path.open("a") as f:
      out = csv.DictWriter(f, METRICS_COLUMNS)
      if new_file:
        out.writeheader()
      out.writerow({k: "" if v is None else v for k, v in row.items()})

  def _drop_rows_after(self, step: int) -> None:
    if self._path is None or not self._path.exists():
      return
    rows = [r for r in csv.DictReader(io.StringIO(self._path.read_text()))
            if int(r["step"]) <= step]
    text = io.StringIO()
    out = csv.DictWriter(text, METRICS_COLUMNS)
    out.writeheader()
    out.writerows(rows)
    tmp = self._path.with_name(self._path.name + ".tmp")
    tmp.write_text(text.getvalue())
    os.replace(tmp, self._path)


def _metrics_to_state(metrics) -> dict[str, Any]:
  """A metrics collection's sums and counts as JSON-ready nested lists."""
  return jax.tree.map(lambda x: np.asarray(x).tolist(),
                      flax.serialization.to_state_dict(metrics))


def _metrics_from_state(like, state: dict[str, Any]):
  """The collection ``_metrics_to_state`` saved, with ``like``'s types."""
  template = flax.serialization.to_state_dict(like)
  values = jax.tree.map(lambda t, v: np.asarray(v, dtype=np.asarray(t).dtype),
                        template, state)
  return flax.serialization.from_state_dict(like, values)


def read_metrics_csv(workdir: str) -> list[dict[str, Any]]:
  """``metrics.csv`` as a list of rows, numbers as numbers (None if empty)."""
  path = pathlib.Path(workdir) / METRICS_FILE
  rows = []
  for row in csv.DictReader(io.StringIO(path.read_text())):
    rows.append({k: (None if v == "" else
                     int(v) if k in ("epoch", "step") else float(v))
                 for k, v in row.items()})
  return rows


class Validation:
  """Every ``eval_every_epochs`` epochs and at the last step: validation
  metrics, the best checkpoint's bookkeeping and early stopping."""

  def __init__(self, exp, writer, record: RunRecord, report_progress):
    self._exp, self._writer, self._record = exp, writer, record
    self._report_progress = report_progress
    config = exp.config
    self._split, self._metric = config.val_split, config.best_metric
    self._every = config.eval_every_epochs
    self._patience = config.early_stopping_patience
    self.last: dict[str, float] | None = None  # The latest metrics.

  def due(self, step: int, epoch: int, end_of_epoch: bool) -> bool:
    return bool(end_of_epoch and self._split and (
        epoch % self._every == 0 or step == self._exp.total_steps))

  def __call__(self, step: int, epoch: int, state) -> bool:
    """Evaluates; True when this is the best validation result so far."""
    with self._report_progress.timed("eval"):
      val = self._exp.evaluate(state, self._split)
    self._writer.write_scalars(step, {f"val_{k}": v for k, v in val.items()})
    logging.info("Epoch %d, step %d: val %s", epoch, step,
                 json.dumps({k: round(v, 5) for k, v in val.items()}))
    record, value = self._record, val[self._metric]
    best = record.best_metric
    is_best = best is None or (value < best if self._metric == "loss"
                               else value > best)
    if is_best:
      record.best_metric, record.best_step = value, step
      record.evals_since_best = 0
    else:
      record.evals_since_best += 1
    record.history.append(dict(step=step, epoch=epoch, **val))
    self.last = val
    return is_best

  def should_stop(self) -> bool:
    return bool(self._patience and
                self._record.evals_since_best >= self._patience)


class Checkpointing:
  """When to save: after every evaluation (or every epoch without one),
  every ``checkpoint_every_steps``, at the end, and on preemption."""

  def __init__(self, exp, checkpoints, record: RunRecord):
    self._every = exp.config.checkpoint_every_steps
    self._has_val = bool(exp.config.val_split)
    self._checkpoints, self._record = checkpoints, record

  def periodic(self, step: int) -> bool:
    return bool(self._every and step % self._every == 0)

  def due(self, step: int, *, end_of_epoch: bool, evaluated: bool,
          finished: bool, preempted: bool) -> bool:
    return (evaluated or self.periodic(step) or finished or preempted or
            (end_of_epoch and not self._has_val))

  def __call__(self, step: int, state, *, best: bool) -> None:
    self._checkpoints.save(step, state, self._record.as_meta(), best=best)


def duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m"
  return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
