"""The training loop's periodic actions, each named for what it does.

After every train step the loop (``jaxattn/train.py``) asks each action
whether it is due and runs it:

* ``NonFiniteGuard``: before anything is logged, evaluated or saved, stops the
  run if a loss went NaN or inf, naming the first bad step, so no checkpoint
  ever holds a diverged state;
* ``TrainLog``: every ``log_every_steps``, the train metrics to the writer
  and one readable progress line;
* ``EpochTimer``: at the end of an epoch, its training seconds and images/s;
* ``Validation``: every ``eval_every_epochs`` epochs, the validation metrics,
  the best one so far and early stopping;
* ``Checkpointing``: when to save the latest (and the best) checkpoint.

``RunRecord`` is what a checkpoint's ``meta`` holds, so a resumed run
continues the same best-metric and early-stopping bookkeeping.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any

from absl import logging


class NonFiniteLossError(FloatingPointError):
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

  @classmethod
  def from_meta(cls, meta: dict[str, Any]) -> "RunRecord":
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in meta.items() if k in names})

  def as_meta(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _merge(total, new):
  return new if total is None else total.merge(new)


class NonFiniteGuard:
  """Stops the run at the first non-finite loss, before it is saved."""

  def __init__(self, checkpoints):
    self._checkpoints = checkpoints
    self._checked_step = 0

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
          f"saving. {resume} Lower the learning rate (config.schedule.lr), "
          "clip gradients (--config.grad_clip_norm=1.0) or train in "
          "--config.compute_dtype=float32.")
    self._checked_step = step


class TrainLog:
  """Every ``log_every_steps`` and at the last step: train scalars + a line.

  Metrics stay on the device and merge there; the host syncs only here.
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


class EpochTimer:
  """Training seconds and images/s of each epoch (evaluation not counted)."""

  def __init__(self, exp, writer, start_step: int):
    self._batch, self._writer = exp.config.batch_size, writer
    self.restart(start_step)

  def restart(self, step: int) -> None:
    self._start, self._start_step = time.time(), step

  def __call__(self, step: int, epoch: int) -> None:
    seconds = time.time() - self._start
    images_per_second = (step - self._start_step) * self._batch / seconds
    self._writer.write_scalars(step, {"epoch_seconds": seconds,
                                      "images_per_second": images_per_second})
    logging.info("Epoch %d: %.1f s of training (%.0f images/s).", epoch,
                 seconds, images_per_second)


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
