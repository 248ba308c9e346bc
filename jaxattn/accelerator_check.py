"""Stops a run that JAX put on the CPU although an accelerator plugin is here.

A JAX accelerator plugin (``jax-cuda12-plugin``, ``jax-cuda13-plugin``, ROCm,
``libtpu``, ...) that cannot start -- most often one of another release than
jaxlib, or a CUDA driver too old for it -- makes JAX fall back to the CPU
with a single warning, and :mod:`jaxattn.cpu_defaults` stays off because a
plugin is installed: the run would train on one CPU device while its user
believes it is on the GPU. :func:`check` turns that into an error that names
the fix, unless the CPU was asked for (``JAX_PLATFORMS=cpu``, or
``--allow_cpu``).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from typing import Mapping, Sequence

from absl import logging

from jaxattn import cpu_defaults
from jaxattn.errors import BadInputError

# Distributions that bring JAX an accelerator; the jax-* ones are released in
# lockstep with jaxlib and load only beside the jaxlib of their own release.
_PLUGIN_DISTRIBUTION = re.compile(
    r"^(jax[-_.](cuda|rocm)\d*[-_.](plugin|pjrt)|libtpu([-_.]nightly)?|"
    r"jax[-_.]metal)$", re.IGNORECASE)
_LOCKSTEP = re.compile(r"^jax-(cuda|rocm)", re.IGNORECASE)


class AcceleratorFallbackError(BadInputError, RuntimeError):
  """An accelerator plugin is installed but JAX runs on the CPU."""


def plugin_distributions() -> list[tuple[str, str]]:
  """(name, version) of the installed accelerator distributions."""
  found = {}
  for dist in importlib.metadata.distributions():
    name = dist.metadata["Name"] or ""
    if _PLUGIN_DISTRIBUTION.match(name):
      found[name.lower().replace("_", "-")] = dist.version
  return sorted(found.items())


def _extra(names: Sequence[str]) -> str | None:
  """The jaxattn extra that installs the matching plugin, if there is one."""
  text = " ".join(names).lower()
  for family in ("cuda13", "cuda12"):
    if family in text:
      return family
  return None


def problem(*, plugins: Sequence[str], distributions: Sequence[tuple[str, str]],
            backend: str, environ: Mapping[str, str], jax_version: str,
            jaxlib_version: str) -> str | None:
  """Why this run must not go on, or None (pure: for :func:`check` and tests).

  Args:
    plugins: ``cpu_defaults.accelerator_plugins()``.
    distributions: ``plugin_distributions()``.
    backend: ``jax.default_backend()``.
    environ: the environment (``JAX_PLATFORMS``).
    jax_version: ``jax.__version__``.
    jaxlib_version: ``jaxlib.__version__``.
  """
  if backend != "cpu" or not (plugins or distributions):
    return None
  platforms = {p.strip() for p in environ.get("JAX_PLATFORMS", "").split(",")
               if p.strip()}
  if platforms == {"cpu"}:
    return None  # The CPU was asked for.
  installed = ", ".join(f"{n} {v}" for n, v in distributions) or ", ".join(
      plugins)
  lines = [f"JAX came up on the CPU although an accelerator plugin is "
           f"installed ({installed}; jax {jax_version}, jaxlib "
           f"{jaxlib_version}): this run would train on one CPU device. "
           "JAX's warning above (xla_bridge) says what failed."]
  stale = [f"{n} {v}" for n, v in distributions
           if _LOCKSTEP.match(n) and v != jaxlib_version]
  extra = _extra([n for n, _ in distributions] + list(plugins))
  if stale:
    lines.append(f"- {', '.join(stale)} is not jaxlib's release "
                 f"({jaxlib_version}); a plugin loads only beside the jaxlib "
                 "of its own release.")
  if extra:
    lines.append(f'- Install jax, jaxlib and the plugin at one release: pip '
                 f'install -e ".[{extra}]" in a checkout, or pip install '
                 f'"jaxattn[{extra}]". {extra} needs an NVIDIA driver '
                 f'{"580" if extra == "cuda13" else "525"} or newer '
                 "(nvidia-smi).")
  else:
    lines.append("- Install jax, jaxlib and the plugin at one release (JAX's "
                 "installation guide names the package for this accelerator).")
  lines.append("- To train on the CPU on purpose: JAX_PLATFORMS=cpu (which "
               "also gives jaxattn's CPU defaults, a JAX device per core), or "
               "--allow_cpu.")
  return "\n".join(lines)


def check(*, allow_cpu: bool = False) -> None:
  """Raises :class:`AcceleratorFallbackError` (or only warns with
  ``allow_cpu``) when :func:`problem` finds one. Initialises JAX's backends:
  call it after ``jax.distributed.initialize``."""
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  why = problem(plugins=cpu_defaults.accelerator_plugins(),
                distributions=plugin_distributions(),
                backend=jax.default_backend(), environ=os.environ,
                jax_version=jax.__version__,
                jaxlib_version=jaxlib.__version__)
  if why is None:
    return
  if allow_cpu:
    logging.warning("%s\nGoing on with --allow_cpu.", why)
    return
  raise AcceleratorFallbackError(why)
