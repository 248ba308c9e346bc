"""Multi-process jobs on JAX's own runtime, and clean stops on preemption.

One process per GPU (or per host), all started by the cluster's scheduler:
SLURM's ``srun``, Open MPI's ``mpirun``, a Kubernetes JobSet, or
``launch/local.py`` on one machine. :func:`initialize` connects them through
``jax.distributed.initialize`` (gloo collectives on CPU, NCCL on GPU); after
it, ``jax.devices()`` lists every device of every process and the trainer's
mesh spans them all.

:class:`PreemptionWatch` turns SIGTERM (the scheduler's preemption or
time-limit notice) into "save at this step and exit 0". In a multi-process
job the notice reaches one process but all of them must save the same step:
JAX's preemption sync manager agrees on that step through the coordinator.
A process that dies outright is caught by the coordinator's heartbeats: the
survivors abort with an error instead of waiting forever in a collective.
"""

from __future__ import annotations

import dataclasses
import os
import signal

import jax
from absl import logging
from jax.experimental import multihost_utils

from jaxattn import compilation_cache
from jaxattn.errors import BadInputError

# Environments where JAX finds coordinator, process count and id by itself.
# Inside an `srun` step SLURM_STEP_ID is set; a batch script that runs
# python directly has SLURM_NTASKS too, but is one process.
_SLURM_VARS = ("SLURM_STEP_ID", "SLURM_NTASKS", "SLURM_PROCID")
_OMPI_SIZE = "OMPI_COMM_WORLD_SIZE"


class LaunchError(BadInputError, ValueError):
  """Multi-process flags that do not describe a job; says which to pass."""


@dataclasses.dataclass(frozen=True)
class Launch:
  """How this process joins a job; all None for auto-detection."""

  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  heartbeat_timeout_seconds: int = 100
  initialization_timeout_seconds: int = 300


def detected_process_count() -> int:
  """Processes in the job according to the scheduler's environment."""
  if all(v in os.environ for v in _SLURM_VARS):
    return int(os.environ["SLURM_NTASKS"])
  if _OMPI_SIZE in os.environ:
    return int(os.environ[_OMPI_SIZE])
  return 1


def _slurm_local_device_ids() -> list[int] | None:
  """The GPU of this task when SLURM has already narrowed what it sees.

  JAX's SLURM support picks GPU number SLURM_LOCALID. With `--gpus-per-task`
  or `--gpu-bind`, SLURM also sets CUDA_VISIBLE_DEVICES to that one GPU, so
  number SLURM_LOCALID no longer exists (task 3 sees only "GPU 0"). Then the
  right local id is the task's position among the visible devices.
  """
  visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
  local_id = os.environ.get("SLURM_LOCALID")
  if not visible or local_id is None:
    return None
  count = len([v for v in visible.split(",") if v.strip()])
  local_id = int(local_id)
  if local_id < count:
    return None  # Every task sees the node's GPUs: JAX's default is right.
  return [local_id % count]


def initialize(launch: Launch = Launch()) -> None:
  """Joins the multi-process job, if this is one; a no-op otherwise."""
  explicit = launch.num_processes is not None
  count = launch.num_processes if explicit else detected_process_count()
  if count <= 1:
    return
  if explicit and (launch.coordinator_address is None or
                   launch.process_id is None):
    raise LaunchError(
        f"--num_processes={count} needs --coordinator_address=HOST:PORT (the "
        "address of process 0) and --process_id=0..N-1 on every process; on "
        "SLURM or Open MPI leave all three unset to detect them.")
  if explicit and not 0 <= launch.process_id < count:
    raise LaunchError(f"--process_id={launch.process_id} must be in "
                      f"0..{count - 1} for --num_processes={count}.")
  kwargs = dict(
      heartbeat_timeout_seconds=launch.heartbeat_timeout_seconds,
      initialization_timeout=launch.initialization_timeout_seconds)
  if explicit:
    kwargs.update(coordinator_address=launch.coordinator_address,
                  num_processes=count, process_id=launch.process_id)
  elif "SLURM_LOCALID" in os.environ:
    kwargs["local_device_ids"] = _slurm_local_device_ids()
  jax.distributed.initialize(**kwargs)
  if jax.process_index() != 0:
    # Process 0 speaks for the job; the others only report problems.
    logging.set_verbosity(logging.WARNING)
  logging.info("Joined a job of %d processes: %d devices, %d local.",
               jax.process_count(), jax.device_count(),
               jax.local_device_count())
  compilation_cache.off_for_multiprocess_cpu()  # Before the first compile.


def shutdown() -> None:
  """Leaves the job cleanly once this process's work is done.

  A barrier of all processes, then the coordination client (and, on process
  0, the service) stop. Without it they are torn down during interpreter
  exit in no particular order: process 0's service may vanish while a peer's
  client still polls it, and that peer dies with SIGABRT at the very end of
  a finished run. Only for success paths: after an error the peers may never
  reach the barrier, and the heartbeats stop them instead.
  """
  if jax.process_count() > 1:
    jax.distributed.shutdown()


def is_chief() -> bool:
  return jax.process_index() == 0


class PreemptionWatch:
  """Says at which step to save and stop after a SIGTERM.

  Multi-process: JAX's preemption sync manager (it catches SIGTERM itself
  and makes every process answer True at the same step). Single process:
  a SIGTERM handler that sets a flag. Either way the check is a local read,
  cheap enough for every step.
  """

  def __init__(self):
    self._signalled = False
    self._previous_handler = None
    if jax.process_count() == 1:
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning("SIGTERM received: saving a checkpoint after this step.")
    self._signalled = True

  def should_stop(self, step: int) -> bool:
    """True at the step where every process saves and exits."""
    if jax.process_count() == 1:
      return self._signalled
    return multihost_utils.reached_preemption_sync_point(step)

  def close(self) -> None:
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None
