"""Bad input to the commands: a short error that names the fix, no traceback.

Each runs the real command in a subprocess, as a user would, and stops at the
bad input long before any training.
"""

import os
import pathlib
import re
import stat
import subprocess
import sys

import numpy as np
import pytest

from jaxattn import configlib
from tests.conftest import REPO, run_main

SMOKE = "--config=configs/quickstart.py:smoke"
# absl's log lines (I1206 10:23:20.268 ...) and TensorFlow's start-up notice.
_LOG_LINE = re.compile(r"^([IWEF]\d{4} \d\d:|WARNING: All log messages)")


def _stderr_lines(proc) -> list[str]:
  """stderr without absl's and TensorFlow's log lines."""
  return [line for line in proc.stderr.splitlines()
          if line.strip() and not _LOG_LINE.match(line)]


def test_negative_epochs_fail_before_the_workdir_is_written(tmp_path):
  workdir = tmp_path / "run"
  proc = run_main(SMOKE, f"--workdir={workdir}", "--config.num_epochs=-3",
                  check=False, timeout=300)
  assert proc.returncode != 0, proc.stderr[-3000:]
  assert "config.num_epochs=-3 must be >= 0" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not workdir.exists()


@pytest.mark.parametrize("command,override,message", [
    # main.py: a nested key names that level's keys and the closest one.
    ("main.py", "--config.optimizer.nmae=adam",
     "--config.optimizer.nmae: config.optimizer has no key 'nmae'. Did you "
     "mean --config.optimizer.name? Keys of config.optimizer: b1, b2, eps, "
     "momentum, name, nesterov, weight_decay, weight_decay_exclude."),
    # Every absl command defines --config the same way (summary: the
    # cheapest to start).
    ("-m jaxattn.summary", "--config.batchsize=3",
     "config has no key 'batchsize'. Did you mean --config.batch_size? "
     "Keys of config: augment, batch_size,"),
])
def test_unknown_config_key_is_a_short_usage_error(tmp_path, command,
                                                   override, message):
  """It was a 51-line traceback naming no valid key."""
  workdir = tmp_path / "run"
  argv = [*command.split(), SMOKE, override]
  if command == "main.py":
    argv.append(f"--workdir={workdir}")
  proc = subprocess.run([sys.executable, *argv], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert len(_stderr_lines(proc)) < 15, proc.stderr
  assert "Traceback" not in proc.stderr
  assert message in proc.stderr
  assert not workdir.exists()


def test_unknown_config_key_through_the_loader():
  """The converter and the tests load configs with the same message."""
  with pytest.raises(configlib.ConfigError,
                     match=r"config.schedule has no key 'warmup'\. Did you "
                     r"mean --config.schedule.warmup_steps\?"):
    configlib.load("quickstart:smoke", {"schedule.warmup": 3})
  with pytest.raises(configlib.ConfigError,
                     match=r"config.num_epochs=1 is a value, not a group"):
    configlib.load("quickstart:smoke", ["num_epochs.x=3"])


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)],
                         ids=["umask022", "umask027"])
def test_converter_outputs_follow_the_umask(tmp_path, umask, mode):
  """They were written 0600 (mkstemp's mode), unreadable to anyone else."""
  from jaxattn.convert import files  # pylint: disable=g-import-not-at-top
  out = tmp_path / "weights.npz"
  previous = os.umask(umask)
  try:
    files.write_state_dict({"w": np.zeros(3, np.float32)}, str(out))
    files.atomic_write(str(tmp_path / "out.json"),
                       lambda tmp: pathlib.Path(tmp).write_text("{}"))
  finally:
    os.umask(previous)
  assert stat.S_IMODE(out.stat().st_mode) == mode
  assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == mode
