"""JAX's persistent compilation cache, on by default in one place per user.

A rerun, a resumed run and a requeued cluster job compile the same train and
eval steps again; with the cache they read the executables back instead
(minutes for the hybrid's ViT-B/8 on CPU). The directory does not depend on
the workdir, so every run of a config shares it:

1. ``--jax_compilation_cache_dir`` / ``JAX_COMPILATION_CACHE_DIR`` (JAX's own
   option) wins when set;
2. else ``JAXATTN_COMPILATION_CACHE`` (``0`` or ``off`` turns the cache off);
3. else ``$XDG_CACHE_HOME/jaxattn/xla`` (``~/.cache/jaxattn/xla``).

``launch/slurm.sbatch`` and ``launch/jobset.yaml`` point it at shared
storage, so every node of a requeued job finds what the last one compiled.

A multi-process job on CPUs runs without it (:func:`off_for_multiprocess_cpu`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
from absl import logging

ENV = "JAXATTN_COMPILATION_CACHE"
_OFF = ("0", "off", "false", "no")


def decide(environ: Mapping[str, str], jax_setting: str | None) -> str | None:
  """The cache directory to set, or None to leave JAX's setting alone."""
  if jax_setting:  # The user set JAX's option (flag or environment).
    return None
  value = environ.get(ENV, "").strip()
  if value.lower() in _OFF:
    return None
  if value:
    return os.path.expanduser(value)
  cache_home = environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return os.path.join(cache_home, "jaxattn", "xla")


def configure() -> str | None:
  """Turns the cache on (before the first compile); returns its directory."""
  explicit = (jax.config.jax_compilation_cache_dir or
              os.environ.get("JAX_COMPILATION_CACHE_DIR"))
  directory = decide(os.environ, explicit)
  if directory is None:
    if explicit:
      logging.info("Compilation cache: %s (JAX's setting).", explicit)
    return explicit or None
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:  # A read-only home: run without the cache.
    logging.warning("Compilation cache off: cannot create %s (%s); set %s "
                    "to a writable directory.", directory, e, ENV)
    return None
  jax.config.update("jax_compilation_cache_dir", directory)
  # Cache every step that took a second to compile (JAX's default), and the
  # small ones too on CPU, where test-size steps compile in under a second.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  logging.info("Compilation cache: %s (%s=0 turns it off).", directory, ENV)
  return directory


def off_for_multiprocess_cpu() -> bool:
  """Turns the cache off in a multi-process job on CPU devices; call it after
  joining the job and before the first compile. Returns whether it did.

  With jax 0.12.1, two processes of two CPU devices each (``launch/local.py``)
  that resumed a run with their steps read back from the cache hung for good
  in their first cross-process all-gather (gloo): both processes waited in it
  and nothing failed (``tests/test_distributed.py``, resume after SIGTERM; the
  same run without the cache finished in a minute). jax 0.10.2 passed the
  same test with the cache. Multi-process CPU jobs are this project's stand-in
  for multi-host ones, and compiling their small steps again costs seconds,
  so the cache is off for them on every JAX release; GPU and TPU jobs keep it.
  """
  if jax.process_count() <= 1 or jax.default_backend() != "cpu":
    return False
  if not jax.config.jax_enable_compilation_cache:
    return False
  jax.config.update("jax_enable_compilation_cache", False)
  logging.info("Compilation cache off: a multi-process job on CPUs (its "
               "collectives hung on executables read back from the cache).")
  return True
