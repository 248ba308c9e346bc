"""What a person reads in the terminal: the project's own lines, and bad
input as one message.

Every command starts through here (``main.py``, ``bench``, ``summary``,
``predict``, ``explain`` with :func:`run`; the argparse ``convert`` with
:func:`configure_logging` and :func:`report`):

* **Logs.** INFO lines come only from jaxattn itself and from code outside
  installed packages (config files, a ``config.source_modules`` module);
  warnings and errors come from everyone. Orbax, CLU's metric writer and
  progress notes, JAX and absl all log through the same absl handler, so a
  verbosity level alone cannot tell them apart: a filter on that handler
  looks at the file each record comes from. Orbax alone wrote ~1,800 INFO
  lines for a minute of quickstart training. TensorFlow's C++ INFO lines
  (``TF_CPP_MIN_LOG_LEVEL=1``, unless it is set) go too. ``--library_logs``
  brings all of them back.
* **Errors.** An :class:`errors.BadInputError` (a config value, a dataset, a
  locked workdir, a full disk, ...) ends the command with ``error: MESSAGE``
  on stderr and exit status 1, no traceback; ``--traceback`` raises it as it
  is. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import site
import sys
import sysconfig
from collections.abc import Callable
from typing import Any

from absl import app, flags
from absl import logging as absl_logging

from jaxattn import errors

TF_LOG_ENV = "TF_CPP_MIN_LOG_LEVEL"
LIBRARY_LOGS_HELP = (
    "Show the INFO log lines of the libraries too (Orbax, CLU, JAX, absl, "
    "TensorFlow's C++ side); by default only jaxattn's own INFO lines and "
    "everyone's warnings and errors are shown.")
TRACEBACK_HELP = (
    "On bad input (a config value, dataset, workdir, file, ...) show the "
    "traceback, not only the one-line 'error: ...' message.")
_PACKAGE_DIRS = tuple({os.path.dirname(f) + os.sep for f in (
    os.path.abspath(__file__), os.path.realpath(__file__))})


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """``--library_logs`` and ``--traceback``, for an absl command."""
  flags.DEFINE_bool("library_logs", False, LIBRARY_LOGS_HELP,
                    flag_values=flag_values)
  flags.DEFINE_bool("traceback", False, TRACEBACK_HELP,
                    flag_values=flag_values)


def run(main: Callable[[list[str]], Any]) -> None:
  """``app.run(main)`` with this module's flags, log filter and error exit."""
  define_flags()
  # --help lists the flags of the module that was started (main.py); the
  # command's own, --config and these are defined elsewhere.
  _list_in_help(main.__module__, "jaxattn.configlib", __name__)
  quieted_tensorflow = quiet_tensorflow()
  app.run(functools.partial(_run_main, main, quieted_tensorflow))


def _run_main(main, quieted_tensorflow: bool, argv: list[str]) -> Any:
  library_logs = flags.FLAGS.library_logs
  if library_logs and quieted_tensorflow:
    unquiet_tensorflow()
  configure_logging(library_logs=library_logs)
  try:
    return main(argv)
  except errors.BadInputError as e:
    if flags.FLAGS.traceback:
      raise
    report(e)
    return 1


def _list_in_help(*modules: str) -> None:
  by_module = flags.FLAGS.flags_by_module_dict()
  for module in modules:
    for flag in by_module.get(module, ()):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def report(error: BaseException) -> None:
  """``error: MESSAGE`` on stderr, after any log lines still buffered."""
  for handler in logging.getLogger().handlers:
    handler.flush()
  print(f"error: {error}", file=sys.stderr, flush=True)


def quiet_tensorflow() -> bool:
  """TF_CPP_MIN_LOG_LEVEL=1 (no INFO lines) unless it is set; whether this
  set it. Before TensorFlow's first log line (best: before its import)."""
  if TF_LOG_ENV in os.environ:
    return False
  os.environ[TF_LOG_ENV] = "1"
  return True


def unquiet_tensorflow() -> None:
  """Undoes quiet_tensorflow() (TensorFlow reads the variable at its first
  log line, which has not come yet)."""
  os.environ.pop(TF_LOG_ENV, None)


def configure_logging(*, library_logs: bool = False) -> None:
  """Only jaxattn's INFO lines on absl's handler (all with library_logs)."""
  handler = absl_logging.get_absl_handler()
  for old in [f for f in handler.filters if isinstance(f, OwnInfoOnly)]:
    handler.removeFilter(old)
  if not library_logs:
    handler.addFilter(OwnInfoOnly())


class OwnInfoOnly(logging.Filter):
  """Warnings and errors from everyone; INFO and below only from code that
  is not an installed library (jaxattn's own package always counts as
  ours, installed or not)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not is_library_file(
        record.pathname)


def is_library_file(path: str) -> bool:
  """Whether `path` lies in an installed package or the standard library
  (and not in jaxattn)."""
  if not os.path.isabs(path):  # "<frozen ...>", "(unknown file)": not ours.
    return True
  for p in {path, os.path.realpath(path)}:
    if p.startswith(_PACKAGE_DIRS):
      return False
    if p.startswith(_library_dirs()):
      return True
  return False


@functools.cache
def _library_dirs() -> tuple[str, ...]:
  paths = sysconfig.get_paths()
  dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")
          if k in paths}
  dirs.update(getattr(site, "getsitepackages", list)())
  dirs.add(site.getusersitepackages())
  dirs |= {os.path.realpath(d) for d in dirs}
  return tuple(sorted(d.rstrip(os.sep) + os.sep for d in dirs if d))
