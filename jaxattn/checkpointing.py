"""Orbax checkpoints of a training run: the latest few, and the best one.

A workdir holds::

  config.json              the resolved config the run was started with
  checkpoints/<step>/      periodic and final checkpoints (keep N)
  checkpoints_best/<step>/ the checkpoint with the best validation metric

Each checkpoint has two items: ``state`` (the TrainState pytree, saved
asynchronously with its shardings) and ``meta`` (JSON: epoch, best metric,
early-stopping counter, whether training finished). Orbax writes into a
temporary directory and renames it when complete, so a run killed mid-save
leaves the previous checkpoint intact and restarts from it.

What can still go wrong, and what happens then:

* a run killed between the latest and the best save of one step: the latest
  checkpoint's meta names the best step, so the trainer re-saves the best
  from it on the next start (``train.py``), and evaluating ``best`` refuses
  a best checkpoint the run record does not name;
* a damaged checkpoint (a truncated or missing file): restoring says which
  file, and the trainer moves the step aside (``<step>.damaged-<time>``,
  never deleted) and resumes from the newest intact one
  (``restore_latest_intact``);
* a full disk: each save first compares the checkpoint's size with the free
  space, and an ENOSPC from Orbax's writers becomes one ``NoSpaceError``
  line naming the directory and the space needed.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import re
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from jaxattn.errors import BadInputError

LATEST_DIR = "checkpoints"
BEST_DIR = "checkpoints_best"
CONFIG_FILE = "config.json"


# The files every complete checkpoint step has (Orbax 0.12's layout: the
# composite's own metadata, the state's tree metadata and OCDBT manifest,
# the meta item's JSON). Used to say *which* file is missing or broken when
# a restore fails, instead of blaming the config.
_REQUIRED_FILES = ("_CHECKPOINT_METADATA", "state/_METADATA",
                   "state/manifest.ocdbt", "meta/metadata")
_JSON_FILES = ("_CHECKPOINT_METADATA", "state/_METADATA", "meta/metadata")
# TensorStore's read errors carry an absl status code ("OUT_OF_RANGE: Error
# reading ... in OCDBT database at local file ..."): the bytes on disk are
# not what was written.
_READ_ERROR = re.compile(r"\b(OUT_OF_RANGE|DATA_LOSS|NOT_FOUND|"
                         r"FAILED_PRECONDITION|INVALID_ARGUMENT|UNKNOWN): "
                         r"Error (reading|opening|decoding)")


class CheckpointError(BadInputError, ValueError):
  """A checkpoint that is missing or does not fit the model."""


class DamagedCheckpointError(CheckpointError):
  """A checkpoint step whose files are missing, truncated or unreadable."""

  def __init__(self, message: str, step_dir: str):
    super().__init__(message)
    self.step_dir = step_dir


class NoSpaceError(BadInputError, OSError):
  """Not enough disk space for a checkpoint; one line names where and how
  much."""

  def __init__(self, message: str):
    super().__init__(errno.ENOSPC, message)

  def __str__(self) -> str:
    return self.strerror


def _manager(directory: str, keep: int, *, read_only: bool = False):
  # cleanup_tmp_directories: a run killed mid-save leaves Orbax's temporary
  # step directory behind; the workdir lock (workdir_lock.py) guarantees no
  # other run is writing one, so the next run may remove it.
  # barrier_sync_key_prefix: with several processes, each save ends at
  # barriers named after the step ("async_write_complete.<step dir>"). The
  # latest and best managers save the same step at the end of a run; with
  # one name the processes could pass different barriers and one of them
  # wait until the job timed out. The directory's name keeps them apart.
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=not read_only, read_only=read_only,
      enable_async_checkpointing=not read_only,
      cleanup_tmp_directories=not read_only,
      multiprocessing_options=ocp.options.MultiprocessingOptions(
          barrier_sync_key_prefix=os.path.basename(directory)))
  return ocp.CheckpointManager(directory, options=options,
                               item_names=("state", "meta"))


def _drop_empty(tree: Any) -> Any:
  """Zero-size arrays -> None: Orbax refuses to save them.

  Seed 003's SE block has a zero-width hidden layer (kernel [12, 0]); it has
  nothing to store, and restore() recreates it from the target's shape.
  """
  return jax.tree.map(lambda x: None if x.size == 0 else x, tree)


def _restore_empty(restored: Any, target: Any) -> Any:
  # A None in the target is an absent part of the state (no EMA weights):
  # it stays None. A None restored for an array is a zero-size leaf.
  return jax.tree.map(
      lambda t, r: t if t is None else (
          jnp.zeros(t.shape, t.dtype, device=t.sharding) if r is None else r),
      target, restored, is_leaf=lambda x: x is None)


class RunCheckpoints:
  """The latest-N and best checkpoint managers of one workdir."""

  def __init__(self, workdir: str, *, keep: int = 3, read_only: bool = False):
    self.workdir = os.path.abspath(workdir)
    self._latest = _manager(os.path.join(self.workdir, LATEST_DIR), keep,
                            read_only=read_only)
    self._best = _manager(os.path.join(self.workdir, BEST_DIR), 1,
                          read_only=read_only)

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def best_step(self) -> int | None:
    return self._best.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._latest.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any], *,
           best: bool = False, latest: bool = True) -> None:
    """Saves `step` as the latest (and the best) checkpoint, asynchronously;
    ``latest=False`` saves the best only (``repair_best``).

    The order makes every interruption repairable. The latest is saved
    first: its meta names the best step, so a run killed between the two
    saves leaves a record from which the best is re-saved (``repair_best``).
    And a new step waits for the previous best save to complete, so the
    latest checkpoint that the best is repaired from is never garbage
    collected before the best exists. A best step that already exists is
    the same step of the same run, saved before an interruption and
    recomputed identically by the exact resume: it is kept, not saved again
    (Orbax refuses to overwrite a step).
    """
    self._best.wait_until_finished()
    managers = [self._latest] if latest else []
    if best:
      if step in self._best.all_steps():
        logging.info("The best checkpoint of step %d exists (saved before "
                     "the run was interrupted); kept.", step)
      else:
        managers.append(self._best)
    state = _drop_empty(state)
    self._check_free_space(step, state, copies=len(managers))
    for manager in managers:
      # force=True: the trainer decides when to save; Orbax's own interval
      # policy must not skip any of them.
      with self._no_space_as_one_line(step):
        manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                     force=True)

  def _check_free_space(self, step: int, state: Any, copies: int) -> None:
    """Refuses a save the disk cannot hold, before Orbax's writer threads
    fail one by one with ENOSPC. The estimate is the arrays' bytes (each
    saved once, however sharded) plus 1 MiB for metadata. Orbax's zstd
    barely shrinks float weights (quickstart's smoke state: 435 KB of arrays,
    436 KB of data files), so this is close, not a gross over-estimate."""
    needed = copies * (sum(x.nbytes for x in jax.tree.leaves(state)
                           if hasattr(x, "nbytes")) + 2**20)
    free = shutil.disk_usage(self.workdir).free
    if free < needed:
      raise NoSpaceError(self._no_space_message(step, needed, free))

  def _no_space_message(self, step: int, needed: float | None,
                        free: float | None = None) -> str:
    free = shutil.disk_usage(self.workdir).free if free is None else free
    size = f"it needs about {_mb(needed)}, " if needed else ""
    latest = self.latest_step()
    resume = (f"it resumes from step {latest}" if latest is not None
              else "it starts over")
    return (f"No space left on the device of {self.workdir} for the "
            f"checkpoint of step {step}: {size}{_mb(free)} free. Free some "
            "space (or rerun with another --workdir) and rerun the same "
            f"command: {resume}.")

  @contextlib.contextmanager
  def _no_space_as_one_line(self, step: int | None):
    """An ENOSPC anywhere in an Orbax error (its async writers re-raise
    them wrapped, after logging each) becomes one NoSpaceError line."""
    try:
      yield
    except NoSpaceError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      if not _is_no_space(e):
        raise
      raise NoSpaceError(self._no_space_message(
          step if step is not None else self.latest_step(),
          needed=None)) from None

  def resolve(self, which: str | int | None, *,
              best_or_latest: bool = False) -> tuple[str, int]:
    """'latest' | 'best' | step (an int or its string) -> (kind, step).

    ``best_or_latest``: 'best' falls back to the latest checkpoint when the
    run kept no best one (it trained without a validation split, so the
    latest is its only model).
    """
    which = "latest" if which in (None, "") else which
    if which == "best" and best_or_latest and self.best_step() is None:
      which = "latest"
    if which == "best":
      step = self.best_step()
      if step is None:
        raise CheckpointError(
            f"No best checkpoint in {self.workdir}/{BEST_DIR} (is validation "
            "off?). Use --checkpoint=latest or a step from "
            f"{self.all_steps()}.")
      return "best", step
    if which == "latest":
      step = self.latest_step()
      if step is None:
        raise CheckpointError(f"No checkpoint in {self.workdir}/{LATEST_DIR}.")
      return "latest", step
    try:
      step = int(which)
    except ValueError:
      raise CheckpointError(
          f"Checkpoint {which!r} is neither 'best', 'latest' nor a step "
          f"number; available steps: {self.all_steps()} (best: "
          f"{self.best_step()}).") from None
    if step in self.all_steps():
      return "latest", step
    if step == self.best_step():
      return "best", step
    raise CheckpointError(
        f"No checkpoint at step {step} in {self.workdir}; available steps: "
        f"{self.all_steps()} (best: {self.best_step()}).")

  def restore(self, abstract_state: Any, which: str | int | None = "latest",
              *, best_or_latest: bool = False
              ) -> tuple[Any, dict[str, Any], int]:
    """(state, meta, step) restored onto the abstract state's shardings.

    The best checkpoint is checked against the run record first
    (``check_best``): a stale best is refused, never silently used.
    """
    kind, step = self.resolve(which, best_or_latest=best_or_latest)
    if kind == "best":
      self.check_best()
    manager = self._best if kind == "best" else self._latest
    args = ocp.args.Composite(
        state=ocp.args.StandardRestore(_drop_empty(abstract_state)),
        meta=ocp.args.JsonRestore())
    step_dir = os.path.join(str(manager.directory), str(step))
    try:
      restored = manager.restore(step, args=args)
    except Exception as e:  # pylint: disable=broad-except
      # Which is it: a damaged checkpoint, or one of another model?
      damage = _find_damage(step_dir) or _read_error(e)
      if damage:
        raise DamagedCheckpointError(
            f"The checkpoint at step {step} in {manager.directory} is "
            f"incomplete or damaged: {damage}", step_dir) from e
      if not isinstance(e, (ValueError, KeyError, TypeError)):
        raise
      raise CheckpointError(
          f"The checkpoint at step {step} in {self.workdir} does not fit the "
          f"configured model/optimizer: {e}. Was the workdir written with a "
          "different config? Use a fresh --workdir for a different model.") from e
    state = _restore_empty(restored.state, abstract_state)
    return state, dict(restored.meta), step

  def meta(self, step: int, *, best: bool = False) -> dict[str, Any]:
    """Only the meta (run record) of a step: no arrays are read."""
    manager = self._best if best else self._latest
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      step_dir = os.path.join(str(manager.directory), str(step))
      raise DamagedCheckpointError(
          f"The checkpoint at step {step} in {manager.directory} is "
          f"incomplete or damaged: {_find_damage(step_dir) or e}",
          step_dir) from e
    return dict(restored.meta)

  def check_best(self) -> None:
    """Refuses a best checkpoint that the run record does not name.

    The latest checkpoint's meta names the run's best step. A best
    checkpoint at another step means the run was interrupted between its
    latest and its best save (or is saving right now): evaluating it would
    silently test a model the run no longer calls its best.
    """
    latest, best = self.latest_step(), self.best_step()
    if latest is None or best is None:
      return
    named = self.meta(latest).get("best_step")
    if named != best:
      raise CheckpointError(
          f"The best checkpoint in {self.workdir}/{BEST_DIR} is step {best}, "
          f"but the run record of the latest checkpoint (step {latest}) "
          f"names step {named} as the best: the run was interrupted between "
          "its saves (or a training run is saving right now). Rerun the "
          "training command on this workdir: it repairs the best checkpoint "
          "(and results.json). Meanwhile --checkpoint=latest or a step from "
          f"{self.all_steps()} evaluates a consistent checkpoint.")

  def repair_best(self, abstract_state: Any, best_step: int | None) -> bool:
    """Re-saves the best checkpoint from the latest ones when the run record
    names a best step (``best_step``) that the best directory lacks; True
    when it did. A best directory holding a *newer* step is left alone: the
    run was interrupted after that save and will recompute the same step."""
    current = self.best_step()
    if best_step is None or current == best_step:
      return False
    if current is not None and current > best_step:
      return False
    if best_step not in self.all_steps():
      logging.warning(
          "The run record names step %s as the best, but neither %s nor %s "
          "holds it (best there: %s); the best checkpoint cannot be "
          "repaired. The final test uses the latest state instead.",
          best_step, BEST_DIR, LATEST_DIR, current)
      return False
    state, meta, _ = self.restore(abstract_state, best_step)
    self.save(best_step, state, meta, best=True, latest=False)
    self.wait()
    logging.warning("Repaired %s/%s: re-saved the best checkpoint (step %d, "
                    "as the run record names it; it held %s) from %s.",
                    self.workdir, BEST_DIR, best_step, current, LATEST_DIR)
    return True

  def restore_latest_intact(self, abstract_state: Any
                            ) -> tuple[Any, dict[str, Any], int] | None:
    """(state, meta, step) of the newest checkpoint that restores; None when
    there is none.

    A newer step that fails to restore while an older one restores was
    damaged (same run, same config): it is moved aside to
    ``<step>.damaged-<time>`` (kept for inspection, never deleted), with a
    warning naming it. When no step restores, nothing is moved and the
    newest step's error is raised: the config, not the files, may be wrong.
    """
    failures = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        restored = self.restore(abstract_state, step)
      except CheckpointError as e:
        logging.warning("Cannot restore step %d: %s", step, e)
        failures.append((step, e))
        continue
      for failed_step, error in failures:
        self._move_aside(failed_step, error)
      return restored
    if not failures:
      return None
    _, error = failures[0]
    if isinstance(error, DamagedCheckpointError):
      raise DamagedCheckpointError(
          f"{error} No other checkpoint restores either. Move it aside (mv "
          f"{error.step_dir} {error.step_dir}.damaged) and rerun to start "
          "the run over.", error.step_dir) from error
    raise error

  def _move_aside(self, step: int, failure: CheckpointError) -> None:
    # Even a failure that looked like a config mismatch: an older step of
    # the same run restores with this config, so this one is damaged.
    step_dir = os.path.join(str(self._latest.directory), str(step))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = f"{step_dir}.damaged-{stamp}"
    if jax.process_index() == 0:
      os.rename(step_dir, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"jaxattn_move_aside_{target}")
    self._latest.reload()
    logging.warning("Skipped the damaged checkpoint %s: moved it to %s "
                    "(kept, not deleted). %s", step_dir, target, failure)

  def wait(self) -> None:
    with self._no_space_as_one_line(None):
      self._latest.wait_until_finished()
      self._best.wait_until_finished()

  def close(self) -> None:
    with self._no_space_as_one_line(None):
      self._latest.close()
      self._best.close()


def _mb(num_bytes: float) -> str:
  return f"{num_bytes / 2**20:,.1f} MiB"


def _is_no_space(error: BaseException) -> bool:
  """Whether an ENOSPC is anywhere in an exception's chain or group."""
  seen, todo = set(), [error]
  while todo:
    e = todo.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
      return True
    if "No space left on device" in str(e):
      return True
    todo.extend([e.__cause__, e.__context__,
                 *getattr(e, "exceptions", ())])
  return False


def _find_damage(step_dir: str) -> str:
  """A missing or unparsable file of a checkpoint step, named; else ""."""
  for name in _REQUIRED_FILES:
    path = os.path.join(step_dir, name)
    if not os.path.isfile(path):
      return f"{path} is missing."
  for name in _JSON_FILES:
    path = os.path.join(step_dir, name)
    try:
      with open(path) as f:
        json.load(f)
    except (OSError, ValueError) as e:
      return f"{path} is unreadable or truncated ({e})."
  return ""


def _read_error(error: BaseException) -> str:
  """TensorStore's 'Error reading ... <path>' anywhere in the chain."""
  e, seen = error, set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    match = _READ_ERROR.search(str(e))
    if match:
      return str(e)[match.start():].splitlines()[0]
    e = e.__cause__ or e.__context__
  return ""


def split_checkpoint_path(path: str) -> tuple[str, int | None]:
  """workdir | workdir/checkpoints[_best] | .../<step> -> (workdir, step)."""
  path = os.path.abspath(path)
  base = os.path.basename(path)
  if base.isdigit() and os.path.basename(os.path.dirname(path)) in (
      LATEST_DIR, BEST_DIR):
    return os.path.dirname(os.path.dirname(path)), int(base)
  if base in (LATEST_DIR, BEST_DIR):
    return os.path.dirname(path), None
  return path, None


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes the resolved config beside the checkpoints (process 0 only)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(tmp, path)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise CheckpointError(
        f"{workdir} has no {CONFIG_FILE}: it is not a jaxattn workdir (or "
        "training never started there).")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))
