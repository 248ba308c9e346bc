"""Bad input to the commands: a short error that names the fix, no traceback.

Each runs the real command in a subprocess, as a user would, and stops at the
bad input long before any training.
"""

from tests.conftest import run_main

SMOKE = "--config=configs/quickstart.py:smoke"


def _stderr_lines(proc) -> list[str]:
  """stderr without absl's and TensorFlow's log lines."""
  return [line for line in proc.stderr.splitlines()
          if line.strip() and not line.startswith(("I", "W0", "WARNING:"))]


def test_negative_epochs_fail_before_the_workdir_is_written(tmp_path):
  workdir = tmp_path / "run"
  proc = run_main(SMOKE, f"--workdir={workdir}", "--config.num_epochs=-3",
                  check=False, timeout=300)
  assert proc.returncode != 0, proc.stderr[-3000:]
  assert "config.num_epochs=-3 must be >= 0" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not workdir.exists()
