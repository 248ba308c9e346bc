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
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

LATEST_DIR = "checkpoints"
BEST_DIR = "checkpoints_best"
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
  """A checkpoint that is missing or does not fit the model."""


def _manager(directory: str, keep: int, *, read_only: bool = False):
  # cleanup_tmp_directories: a run killed mid-save leaves Orbax's temporary
  # step directory behind; the workdir lock (workdir_lock.py) guarantees no
  # other run is writing one, so the next run may remove it.
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=not read_only, read_only=read_only,
      enable_async_checkpointing=not read_only,
      cleanup_tmp_directories=not read_only)
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
           best: bool = False) -> None:
    state = _drop_empty(state)
    # force=True: the trainer decides when to save; Orbax's own interval
    # policy must not skip any of them.
    for manager in (self._latest, self._best) if best else (self._latest,):
      manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                   force=True)

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
    """(state, meta, step) restored onto the abstract state's shardings."""
    kind, step = self.resolve(which, best_or_latest=best_or_latest)
    manager = self._best if kind == "best" else self._latest
    args = ocp.args.Composite(
        state=ocp.args.StandardRestore(_drop_empty(abstract_state)),
        meta=ocp.args.JsonRestore())
    try:
      restored = manager.restore(step, args=args)
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointError(
          f"The checkpoint at step {step} in {self.workdir} does not fit the "
          f"configured model/optimizer: {e}. Was the workdir written with a "
          "different config? Use a fresh --workdir for a different model.") from e
    state = _restore_empty(restored.state, abstract_state)
    return state, dict(restored.meta), step

  def wait(self) -> None:
    self._latest.wait_until_finished()
    self._best.wait_until_finished()

  def close(self) -> None:
    self._latest.close()
    self._best.close()


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
