"""What jaxattn sets up on a CPU-only host before JAX starts its backend.

XLA:CPU runs one program's ops one after the other, each mostly on one
thread, so a single CPU device leaves the other cores idle most of the step
(see ``benchmarks/README.md``, "A JAX device per core"). On a host
whose only JAX platform is the CPU, :func:`configure` therefore

* splits the CPU into one JAX device per usable core
  (``jax_num_cpu_devices``), so that the jit step's batch is data-parallel
  over the cores, exactly as it is over GPUs;
* appends :data:`XLA_CPU_FLAGS` (XLA:CPU's library paths that measured
  fastest on this project's train steps) to ``XLA_FLAGS``.

How many of those devices a run's mesh then spans is measured per model
(``jaxattn/cpu_layout.py``): a device per core is not the fastest layout
for every model. XLA's CPU client keeps its own thread counts
(``PJRT_NPROC`` sizes them, if you set it): several devices on its pool of
max(cores, devices) threads can deadlock in a collective when the host
dispatches far ahead of them, and the project's loops never do
(``jaxattn/dispatch.py``).

Every choice yields to the user's own: ``--jax_num_cpu_devices=N`` (or
``JAX_NUM_CPU_DEVICES``), ``--xla_force_host_platform_device_count`` in
``XLA_FLAGS``, any flag of :data:`XLA_CPU_FLAGS` already named in
``XLA_FLAGS``, and ``JAXATTN_CPU_DEFAULTS=0`` to leave JAX's defaults alone.
Hosts with an accelerator plugin (CUDA, ROCm, TPU, Metal) or a
``JAX_PLATFORMS`` without ``cpu`` are left as they are. The choice is logged
once per process.

Call it before the first JAX computation (device listing included); the
commands (``main.py``, ``bench``, ``explain``, ``predict``,
``benchmarks/torch_vs_jax.py``) call it first thing.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os

from absl import logging

DISABLE_VAR = "JAXATTN_CPU_DEFAULTS"
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
# XLA:CPU options adopted as the project's CPU default, for the jaxlib
# releases they were measured on (XLA aborts on a flag it does not know, and
# their effect changes between releases). Measured on every architecture's
# full train step (benchmarks/README.md, "XLA:CPU's library paths"):
# YNNPACK for dots only (XLA's default also hands it the convolutions, whose
# gradients it ran 1.3-6x slower than XLA's own; its dots keep bf16 on AMX).
# jaxlib 0.11 and 0.12 get none: nothing was measured on them yet (a shared
# 2-core host gives no trustworthy timings), so they run XLA's own defaults.
# Add a release here only with its measurements in benchmarks/README.md.
_TESTED_XLA_CPU_FLAGS: dict[str, tuple[str, ...]] = {
    "0.10": ("--xla_cpu_experimental_ynn_fusion_type=individual_dot",),
}


def _jaxlib_minor() -> str:
  try:
    version = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return ""
  return ".".join(version.split(".")[:2])


XLA_CPU_FLAGS: tuple[str, ...] = _TESTED_XLA_CPU_FLAGS.get(_jaxlib_minor(), ())

# Distributions whose presence means JAX may pick an accelerator.
_ACCELERATOR_DISTRIBUTIONS = ("libtpu", "libtpu-nightly", "jax-metal")


@dataclasses.dataclass(frozen=True)
class CpuSetup:
  """What :func:`configure` decided, for logs and benchmark records."""

  applied: bool
  reason: str
  cpu_devices: int | None = None  # None: left to JAX / the user.
  xla_flags_added: tuple[str, ...] = ()


_DONE: CpuSetup | None = None


def chose_device_count() -> bool:
  """Whether :func:`configure` picked the CPU device count (not the user):
  only then may ``cpu_layout`` use fewer of them for a model."""
  return _DONE is not None and _DONE.cpu_devices is not None


def usable_cores() -> int:
  """Cores this process may run on (a SLURM task's or a container's share)."""
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # macOS has no sched_getaffinity.
    return max(1, os.cpu_count() or 1)


def accelerator_plugins() -> list[str]:
  """JAX PJRT plugins (and TPU/Metal runtimes) installed in this Python."""
  found = [ep.value for ep in importlib.metadata.entry_points(group="jax_plugins")]
  if importlib.util.find_spec("jax_plugins") is not None:
    import pkgutil  # pylint: disable=g-import-not-at-top
    import jax_plugins  # pylint: disable=g-import-not-at-top,import-error
    found += [m.name for m in pkgutil.iter_modules(jax_plugins.__path__)]
  for name in _ACCELERATOR_DISTRIBUTIONS:
    try:
      importlib.metadata.distribution(name)
      found.append(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return sorted(set(found))


def _flag_name(flag: str) -> str:
  return flag.split("=", 1)[0]


def _decide(environ, cores: int, num_cpu_devices_setting: int,
            plugins: list[str]) -> CpuSetup:
  """The pure decision (no side effects), for :func:`configure` and tests."""
  if environ.get(DISABLE_VAR, "1").strip().lower() in ("0", "false", "no",
                                                       "off"):
    return CpuSetup(False, f"{DISABLE_VAR}={environ[DISABLE_VAR]}")
  platforms = environ.get("JAX_PLATFORMS", "").strip()
  if platforms and "cpu" not in platforms.split(","):
    return CpuSetup(False, f"JAX_PLATFORMS={platforms}")
  if plugins and platforms != "cpu":
    return CpuSetup(False, f"accelerator plugins installed ({', '.join(plugins)})")
  xla_flags = environ.get("XLA_FLAGS", "").split()
  named = {_flag_name(f) for f in xla_flags}
  added = tuple(f for f in XLA_CPU_FLAGS if _flag_name(f) not in named)
  if num_cpu_devices_setting >= 0:
    devices, why = None, f"jax_num_cpu_devices={num_cpu_devices_setting} (yours)"
  elif DEVICE_COUNT_FLAG in named:
    devices, why = None, f"{DEVICE_COUNT_FLAG} in XLA_FLAGS (yours)"
  else:
    devices, why = cores, f"one per usable core ({cores})"
  return CpuSetup(True, why, devices, added)


def _backends_initialized() -> bool:
  """Whether JAX has started its backends (then device settings are late).

  JAX has no public API for this (jax-ml/jax issue 23320, open; its public
  calls that could tell, ``jax.devices()`` and ``jax.extend.backend``, start
  the backends themselves), so this asks ``jax._src.xla_bridge``, whose
  function is the same in jax 0.10.2 and 0.12.1. Should a release move it,
  this says "not started", and a late change of ``jax_num_cpu_devices``
  fails loudly in JAX's own check instead.
  """
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return False


def configure() -> CpuSetup:
  """Applies the CPU defaults (see the module doc); idempotent.

  Must run before JAX initialises a backend; if one is already up it changes
  nothing and says so.
  """
  global _DONE
  if _DONE is not None:
    return _DONE
  import jax  # pylint: disable=g-import-not-at-top
  if _backends_initialized():
    _DONE = CpuSetup(False, "JAX's backend was already initialised")
    logging.warning("jaxattn CPU defaults not applied: %s.", _DONE.reason)
    return _DONE
  setup = _decide(os.environ, usable_cores(),
                  jax.config.jax_num_cpu_devices, accelerator_plugins())
  if setup.applied:
    if setup.cpu_devices is not None:
      jax.config.update("jax_num_cpu_devices", setup.cpu_devices)
    if setup.xla_flags_added:
      os.environ["XLA_FLAGS"] = " ".join(
          [*os.environ.get("XLA_FLAGS", "").split(), *setup.xla_flags_added])
    devices = (f"{setup.cpu_devices} JAX CPU devices, {setup.reason}"
               if setup.cpu_devices is not None else
               f"JAX CPU devices as you set them: {setup.reason}")
    logging.info(
        "CPU host: %s%s; override with --jax_num_cpu_devices=N or "
        "XLA_FLAGS, or %s=0 for JAX's defaults.", devices,
        f"; XLA_FLAGS += {' '.join(setup.xla_flags_added)}"
        if setup.xla_flags_added else "", DISABLE_VAR)
  else:
    logging.info("jaxattn CPU defaults not applied: %s.", setup.reason)
  _DONE = setup
  return setup
