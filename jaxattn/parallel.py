"""Device mesh, shardings, and turning per-process batches into global arrays.

Every device of every process joins one mesh with a single ``data`` axis. The
batch is split along it; parameters and optimizer state are replicated.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def create_mesh() -> Mesh:
  """A 1-D mesh over all devices of all processes."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, name: str = "batch_size") -> int:
  """Returns this process's share of a global batch, or explains the fix."""
  devices, processes = jax.device_count(), jax.process_count()
  if batch_size <= 0 or batch_size % devices:
    raise ValueError(
        f"config.{name}={batch_size} must be a positive multiple of the "
        f"number of devices ({devices}); e.g. --config.{name}="
        f"{max(devices, batch_size // devices * devices or devices)}.")
  return batch_size // processes


def global_batch(local_batch: dict[str, np.ndarray],
                 sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles each process's rows into one array sharded over the mesh."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x),
      local_batch)
