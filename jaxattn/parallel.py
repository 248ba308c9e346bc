"""Device mesh, shardings of the train state, and global batches.

Every device of every process joins one mesh with a single ``data`` axis. The
batch is always split along it. Each leaf of the train state (parameters,
optimizer state, BatchNorm statistics) is placed by the first rule of
``config.sharding_rules`` whose regex matches its path:

* ``replicate``: a full copy on every device (plain data parallelism);
* ``fsdp``: split along one of its dimensions over the ``data`` axis (fully
  sharded data parallelism, as big_vision's ``fsdp`` rule): each device
  holds 1/N of the tensor and XLA all-gathers it where the step needs it.
  Tensors under ``config.fsdp_min_size_mb`` stay replicated: sharding them
  costs more in communication than it saves.

Paths look like ``params/Encoder_0/MlpBlock_0/Dense_0/kernel`` and
``opt_state/0/mu/Encoder_0/...``, so ``(".*", "fsdp")`` shards parameters and
their Adam moments alike. Both placements compute the same step; only memory
and communication differ.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxattn.configlib import ConfigError

DATA_AXIS = "data"
STRATEGIES = ("replicate", "fsdp")
DEFAULT_RULES = ((".*", "replicate"),)


def create_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh over all devices of all processes, or over the first
  ``num_devices`` of them (a CPU host's layout: ``jaxattn/cpu_layout.py``)."""
  devices = jax.devices()
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f"A mesh of {num_devices} devices, but JAX has "
                       f"{len(devices)}.")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_rules(rules) -> tuple[tuple[re.Pattern, str], ...]:
  """Compiles config.sharding_rules, or explains what is wrong."""
  compiled = []
  for rule in rules:
    if len(rule) != 2 or rule[1] not in STRATEGIES:
      raise ConfigError(
          f"config.sharding_rules entry {tuple(rule)!r} must be (regex, "
          f"strategy) with strategy one of {STRATEGIES}; e.g. "
          "((\"params/.*\", \"fsdp\"), (\".*\", \"replicate\")).")
    try:
      compiled.append((re.compile(rule[0]), rule[1]))
    except re.error as e:
      raise ConfigError(
          f"config.sharding_rules regex {rule[0]!r}: {e}") from None
  return tuple(compiled)


def _fsdp_spec(shape: tuple[int, ...], num_devices: int) -> P:
  """Splits the largest dimension that the device count divides."""
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % num_devices == 0 and shape[dim] >= num_devices:
      spec = [None] * len(shape)
      spec[dim] = DATA_AXIS
      return P(*spec)
  return P()  # Nothing divides evenly: keep it whole.


def leaf_spec(name: str, leaf, rules, mesh: Mesh,
              fsdp_min_size_mb: float) -> P:
  """The PartitionSpec of one state leaf under the rules."""
  for pattern, strategy in rules:
    if pattern.fullmatch(name):
      break
  else:
    strategy = "replicate"  # Unmatched leaves: the safe default.
  size_mb = np.prod(leaf.shape, dtype=np.int64) * np.dtype(leaf.dtype).itemsize / 2**20
  if strategy == "fsdp" and leaf.shape and size_mb >= fsdp_min_size_mb:
    return _fsdp_spec(tuple(leaf.shape), mesh.shape[DATA_AXIS])
  return P()


def state_shardings(abstract_state: Any, mesh: Mesh, rules=DEFAULT_RULES,
                    fsdp_min_size_mb: float = 4.0) -> Any:
  """A NamedSharding for each leaf of the (abstract) train state."""
  rules = check_rules(rules)
  def sharding(path, leaf):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    return NamedSharding(mesh, leaf_spec(name, leaf, rules, mesh,
                                         fsdp_min_size_mb))

  return jax.tree_util.tree_map_with_path(sharding, abstract_state)


def is_replicated(shardings: Any) -> bool:
  return all(s.spec == P() or all(p is None for p in s.spec)
             for s in jax.tree.leaves(shardings))


def check_batch_size(batch_size: int, name: str = "batch_size",
                     mesh: Mesh | None = None) -> int:
  """Returns this process's share of a global batch, or explains the fix.
  The batch is split over ``mesh`` (default: every device)."""
  devices = mesh.size if mesh is not None else jax.device_count()
  processes = jax.process_count()
  if batch_size <= 0 or batch_size % devices:
    cpu_hint = ""
    if jax.default_backend() == "cpu" and devices > 1:
      cpu_hint = (f" The {devices} CPU devices are your choice "
                  "(--jax_num_cpu_devices or XLA_FLAGS); without it jaxattn "
                  "picks a count that divides the batch "
                  "(jaxattn/cpu_layout.py).")
    raise ConfigError(
        f"config.{name}={batch_size} must be a positive multiple of the "
        f"number of devices ({devices}); e.g. --config.{name}="
        f"{max(devices, batch_size // devices * devices or devices)}."
        f"{cpu_hint}")
  return batch_size // processes


def global_batch(local_batch: dict[str, np.ndarray],
                 sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles each process's rows into one array sharded over the mesh."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x),
      local_batch)


def prefetch_to_mesh(local_batches: Iterable[dict[str, np.ndarray]],
                     sharding: NamedSharding, size: int = 2
                     ) -> Iterator[dict[str, jax.Array]]:
  """``global_batch`` of each local batch, ``size`` batches ahead.

  The batches come out in their order, unchanged; each is placed on the
  devices (an asynchronous copy) while the steps before it run, so the step
  that takes it does not wait for the transfer. ``size`` batches stay
  resident on the devices; 0 places each one when it is asked for.
  """
  placed: collections.deque = collections.deque()
  for local in local_batches:
    placed.append(global_batch(local, sharding))
    if len(placed) > size:
      yield placed.popleft()
  while placed:
    yield placed.popleft()
