"""A run's lifecycle faults: two runs on one workdir. In-process, on
quickstart's smoke model (2 epochs of 20 steps at batch 64)."""

import os
import signal
import subprocess
import sys

import pytest

from jaxattn import configlib, train, workdir_lock
from tests.conftest import REPO


def _config(**overrides):
  config = configlib.load(f"{REPO}/configs/quickstart.py:smoke")
  config.num_epochs, config.batch_size = 2, 64  # Steps 20 and 40 saved.
  for key, value in overrides.items():
    section, _, field = key.rpartition("__")
    (config[section] if section else config)[field] = value
  return config


# --- 1. One run per workdir --------------------------------------------------
def test_a_second_run_on_a_workdir_is_refused_at_once(tmp_path):
  with workdir_lock.WorkdirLock(str(tmp_path)):  # The first run.
    with pytest.raises(workdir_lock.WorkdirLockedError,
                       match=rf"in use by another training run \(pid "
                       rf"{os.getpid()} on host .*, started .*, command: "):
      train.train_and_evaluate(_config(), str(tmp_path))
    assert os.listdir(tmp_path) == [workdir_lock.LOCK_FILE]  # Nothing else.
  # Released: the next run may take it.
  with workdir_lock.WorkdirLock(str(tmp_path)) as lock:
    assert lock.path == str(tmp_path / workdir_lock.LOCK_FILE)


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c",
       "import sys, time\n"
       "from jaxattn import workdir_lock\n"
       f"workdir_lock.WorkdirLock({str(tmp_path)!r}).acquire()\n"
       "print('locked', flush=True)\n"
       "time.sleep(600)\n"], cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(workdir_lock.WorkdirLockedError,
                       match=f"pid {holder.pid} "):
      workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  lock = workdir_lock.WorkdirLock(str(tmp_path))
  previous = lock.acquire()  # No user action needed.
  assert previous["pid"] == holder.pid
  assert workdir_lock.read_holder(lock.path)["pid"] == os.getpid()
  lock.release()
