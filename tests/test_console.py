"""The console: whose log lines are shown, and how bad input ends a command.

The commands themselves (main.py, predict, convert) are run in
test_bad_input.py and test_main.py; here the pieces, and a tiny absl command
through ``console.run`` (a subprocess, so that no flag is defined here).
"""

import logging
import os
import subprocess
import sys
import textwrap

import orbax.checkpoint
import pytest
from absl import logging as absl_logging
from clu import periodic_actions

from jaxattn import (checkpointing, configlib, console, distributed, errors,
                     inference, periodic, pretrained, train, weights,
                     weights_hub, workdir_lock)
from jaxattn.convert import plan, rules
from jaxattn.data import sources
from tests.conftest import REPO


def test_library_files_are_told_apart_from_jaxattn():
  for library in (orbax.checkpoint.__file__, periodic_actions.__file__,
                  absl_logging.__file__, logging.__file__):
    assert console.is_library_file(library), library
  for ours in (train.__file__, str(REPO / "configs" / "quickstart.py"),
               "/home/someone/my_project/my_sources.py"):
    assert not console.is_library_file(ours), ours


def _record(level, pathname):
  return logging.LogRecord("absl", level, pathname, 1, "message", (), None)


def test_filter_keeps_jaxattn_info_and_everyones_warnings():
  keep = console.OwnInfoOnly().filter
  orbax_file = orbax.checkpoint.__file__
  assert not keep(_record(logging.INFO, orbax_file))
  assert not keep(_record(logging.DEBUG, orbax_file))
  assert keep(_record(logging.WARNING, orbax_file))
  assert keep(_record(logging.ERROR, orbax_file))
  assert keep(_record(logging.INFO, train.__file__))
  assert keep(_record(logging.DEBUG, train.__file__))


def test_configure_logging_adds_one_filter_and_removes_it():
  handler = absl_logging.get_absl_handler()
  ours = lambda: [f for f in handler.filters
                  if isinstance(f, console.OwnInfoOnly)]
  try:
    console.configure_logging()
    console.configure_logging()
    assert len(ours()) == 1
  finally:
    console.configure_logging(library_logs=True)
  assert not ours()


@pytest.mark.parametrize("error,builtin", [
    (configlib.ConfigError, ValueError),
    (sources.DatasetError, ValueError),
    (checkpointing.CheckpointError, ValueError),
    (checkpointing.DamagedCheckpointError, ValueError),
    (checkpointing.NoSpaceError, OSError),
    (workdir_lock.WorkdirLockedError, RuntimeError),
    (periodic.NonFiniteLossError, FloatingPointError),
    (inference.InputError, ValueError),
    (weights.WeightMismatchError, ValueError),
    (weights_hub.WeightsError, OSError),
    (pretrained.InitFromNotFoundError, FileNotFoundError),
    (plan.ConversionError, ValueError),
    (rules.UnknownLayoutError, ValueError),
    (distributed.LaunchError, ValueError),
])
def test_bad_input_errors_keep_their_builtin_type(error, builtin):
  assert issubclass(error, errors.BadInputError)
  assert issubclass(error, builtin)


def test_config_checks_are_bad_input():
  """A value check deep in the trainer (here the optimizer's) is too."""
  config = configlib.load("quickstart:smoke", {"optimizer.name": "adamm"})
  from jaxattn import optim  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.BadInputError, match="Unknown config.optimizer"):
    optim.create_optimizer(config, lambda step: 0.1)


# A command with console.run's ending: its main raises what argv[1] names.
_COMMAND = textwrap.dedent("""
    import os, sys
    from absl import logging
    from jaxattn import configlib, console

    def main(argv):
      print("TF_CPP_MIN_LOG_LEVEL=" + os.environ.get("TF_CPP_MIN_LOG_LEVEL",
                                                     "unset"), flush=True)
      if argv[1] == "config":
        raise configlib.ConfigError("config.lr=-1 must be > 0; pass "
                                    "--config.lr=0.1.")
      raise RuntimeError("a bug")

    console.run(main)
""")


def _command(*args):
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  return subprocess.run([sys.executable, "-c", _COMMAND, *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=120)


def test_bad_input_is_one_line_a_bug_keeps_its_traceback():
  proc = _command("config")
  assert proc.returncode == 1
  assert proc.stderr == ("error: config.lr=-1 must be > 0; pass "
                         "--config.lr=0.1.\n")
  # TensorFlow's C++ INFO lines are off, as the user had not set it.
  assert proc.stdout == "TF_CPP_MIN_LOG_LEVEL=1\n"

  proc = _command("config", "--traceback")
  assert proc.returncode == 1
  assert "Traceback" in proc.stderr
  assert proc.stderr.rstrip().endswith(
      "jaxattn.configlib.ConfigError: config.lr=-1 must be > 0; pass "
      "--config.lr=0.1.")

  proc = _command("bug")
  assert proc.returncode == 1
  assert "Traceback" in proc.stderr and "RuntimeError: a bug" in proc.stderr
  assert "error: " not in proc.stderr


def test_library_logs_also_gives_back_tensorflow_info_lines():
  proc = _command("bug", "--library_logs")
  assert proc.stdout == "TF_CPP_MIN_LOG_LEVEL=unset\n"


def test_help_lists_both_flags():
  proc = _command("--help")  # (absl's --help exits with 1.)
  assert "--[no]library_logs:" in proc.stdout
  assert "--[no]traceback:" in proc.stdout
