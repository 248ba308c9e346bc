"""One training run per workdir: an exclusive OS lock on ``WORKDIR/.lock``.

Two runs writing one workdir interleave ``metrics.csv`` rows, race on the
checkpoints' temporary directories and keep two "best" checkpoints. The
trainer therefore takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on
``WORKDIR/.lock`` before it writes anything there:

* a second run is refused at once, and the message names the holder (host,
  pid, start time, command), which the holder writes into the file;
* the kernel releases the lock when its holder exits, however it exits
  (``kill -9`` included), so a stale lock needs no user action: the next run
  takes it over. No pid-file heuristics.

In a multi-process job only process 0 takes the lock (the others write
nothing of the run's bookkeeping); every process learns the outcome, so the
whole job stops together when the workdir is in use.

``flock`` is reliable on local disks and on most network file systems
(Lustre, NFSv4, GPFS); on a file system without it the lock is only as good
as that file system's emulation.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from typing import Any

import jax

from jaxattn.errors import BadInputError

LOCK_FILE = ".lock"


class WorkdirLockedError(BadInputError, RuntimeError):
  """Another run holds the workdir; the message names it and the fix."""


class WorkdirLock:
  """``with WorkdirLock(workdir):`` holds the workdir for one run."""

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self._fd: int | None = None

  def acquire(self) -> dict[str, Any]:
    """Takes the lock or raises WorkdirLockedError naming its holder.
    Returns the holder it took over from (a run killed while holding it;
    {} when the lock was free)."""
    if jax.process_count() > 1:
      return self._acquire_multiprocess()
    return self._acquire_here()

  def _acquire_here(self) -> dict[str, Any]:
    os.makedirs(self.workdir, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise
      raise WorkdirLockedError(
          f"{self.workdir} is in use by another training run "
          f"({describe(read_holder(self.path))}). Two runs on one workdir "
          "would mix their metrics and checkpoints. Wait for it to end (or "
          "stop it), or train in another --workdir. The lock "
          f"({self.path}) is released by the operating system when that "
          "process exits, even if it is killed.") from None
    previous = read_holder(self.path)
    if previous:  # Its holder died without unlocking (e.g. kill -9).
      from absl import logging  # pylint: disable=g-import-not-at-top
      logging.warning("Took over the lock of %s: %s, which is no longer "
                      "running.", self.workdir, describe(previous))
    holder = dict(host=socket.gethostname(), pid=os.getpid(),
                  started=datetime.datetime.now(datetime.timezone.utc)
                  .strftime("%Y-%m-%d %H:%M:%S UTC"),
                  command=" ".join(sys.argv))
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    self._fd = fd
    return previous

  def _acquire_multiprocess(self) -> dict[str, Any]:
    """Process 0 locks; all processes raise together if it could not."""
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    message, previous = "", {}
    if jax.process_index() == 0:
      try:
        previous = self._acquire_here()
      except WorkdirLockedError as e:
        message = str(e)
    refused = multihost_utils.broadcast_one_to_all(np.int32(bool(message)))
    if message:
      raise WorkdirLockedError(message)
    if int(refused):
      raise WorkdirLockedError(f"{self.workdir} is in use by another "
                               "training run (process 0 says which).")
    return previous

  def release(self) -> None:
    """Unlocks. The file stays: deleting it would let a third run lock a new
    file while a second one waits on the old."""
    if self._fd is None:
      return
    os.ftruncate(self._fd, 0)  # Not held: nobody to name.
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()


def read_holder(path: str) -> dict[str, Any]:
  """What the lock's (last) holder wrote in it; {} when empty or unreadable
  (e.g. read in the instant between its lock and its write)."""
  try:
    with open(path) as f:
      return json.loads(f.read() or "{}")
  except (OSError, ValueError):
    return {}


def describe(holder: dict[str, Any]) -> str:
  if not holder:
    return "holder not yet recorded"
  return (f"pid {holder.get('pid')} on host {holder.get('host')}, started "
          f"{holder.get('started')}, command: {holder.get('command')}")
