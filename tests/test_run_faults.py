"""A run's lifecycle faults: two runs on one workdir, a resume with another
config, a kill between the final saves, a preemption mid-epoch, a damaged
checkpoint, a full disk. In-process, on quickstart's smoke model (2 epochs of
20 steps at batch 64)."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from jaxattn import (checkpointing, configlib, evaluate, periodic, train,
                     workdir_lock)
from tests.conftest import REPO, PreemptedAt, once_per_process


def _config(**overrides):
  config = configlib.load(f"{REPO}/configs/quickstart.py:smoke")
  config.num_epochs, config.batch_size = 2, 64  # Steps 20 and 40 saved.
  for key, value in overrides.items():
    section, _, field = key.rpartition("__")
    (config[section] if section else config)[field] = value
  return config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A finished run, uninterrupted; each test works on its own copy."""
  def make():
    workdir = tmp_path_factory.mktemp("finished") / "w"
    train.train_and_evaluate(_config(), str(workdir))
    return workdir
  return once_per_process("run_faults/finished", make)


@pytest.fixture
def run_copy(finished_run, tmp_path):
  workdir = tmp_path / "w"
  shutil.copytree(finished_run, workdir)
  return workdir


def _results(workdir):
  return json.loads((workdir / train.RESULTS_FILE).read_text())


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


# --- 2. The resume check comes before config.json is written -----------------
def test_a_resume_that_changes_the_run_is_refused_and_config_json_kept(
    run_copy):
  saved = (run_copy / checkpointing.CONFIG_FILE).read_bytes()
  with pytest.raises(ValueError, match=r"config.optimizer.name: 'adamw' in "
                     r".*config.json, 'sgd' now"):
    train.train_and_evaluate(_config(optimizer__name="sgd"), str(run_copy))
  assert (run_copy / checkpointing.CONFIG_FILE).read_bytes() == saved
  # A finished run rerun longer and with another learning rate: refused,
  # naming both keys, not a silent no-op that keeps the new values.
  with pytest.raises(ValueError) as error:
    train.train_and_evaluate(_config(num_epochs=3, schedule__lr=0.01),
                             str(run_copy))
  assert "config.num_epochs: 2 in" in str(error.value)
  assert "config.schedule.lr: 0.003 in" in str(error.value)
  assert "use a new --workdir" in str(error.value)
  assert (run_copy / checkpointing.CONFIG_FILE).read_bytes() == saved
  # Operational keys may change: the finished run is simply complete.
  results = train.train_and_evaluate(_config(log_every_steps=7),
                                     str(run_copy))
  assert results == _results(run_copy)


# --- 3. A kill between the final latest and best saves -----------------------
def test_a_run_killed_between_its_final_saves_is_completed(run_copy,
                                                           finished_run):
  expected = _results(finished_run)
  assert expected["best_step"] == 40, "the fixture's best must be its last"
  # What a kill -9 after the final latest save leaves: the best checkpoint
  # still at epoch 1 (the record names step 40), no results.json.
  shutil.rmtree(run_copy / checkpointing.BEST_DIR / "40")
  shutil.copytree(run_copy / checkpointing.LATEST_DIR / "20",
                  run_copy / checkpointing.BEST_DIR / "20")
  (run_copy / train.RESULTS_FILE).unlink()

  with pytest.raises(checkpointing.CheckpointError,
                     match=r"best checkpoint .* is step 20, but the run "
                     r"record .* names step 40.*Rerun the training command"):
    evaluate.evaluate_checkpoint(str(run_copy), checkpoint="best")
  results = train.train_and_evaluate(_config(), str(run_copy))
  assert os.listdir(run_copy / checkpointing.BEST_DIR) == ["40"]
  assert results["test_checkpoint"] == {"step": 40, "which": "best"}
  assert results["test"] == expected["test"]
  assert _results(run_copy) == results
  assert evaluate.evaluate_checkpoint(str(run_copy))["step"] == 40


# --- 5. The resumed epoch's metrics.csv row covers the whole epoch -----------
def test_a_preempted_epoch_keeps_its_train_metrics(tmp_path, finished_run,
                                                   monkeypatch):
  workdir = tmp_path / "w"
  with monkeypatch.context() as patch:
    patch.setattr(train.distributed, "PreemptionWatch", PreemptedAt(30))
    assert train.train_and_evaluate(_config(), str(workdir)) == dict(
        preempted=True, final_step=30)
  results = train.train_and_evaluate(_config(), str(workdir))
  straight = periodic.read_metrics_csv(str(finished_run))
  resumed = periodic.read_metrics_csv(str(workdir))
  assert [r["step"] for r in resumed] == [20, 40]
  for key in ("train_loss", "train_accuracy", "learning_rate", "val_loss"):
    assert resumed[1][key] == pytest.approx(straight[1][key], rel=1e-6), key
  assert results["test"] == _results(finished_run)["test"]


# --- 6. A damaged latest checkpoint ------------------------------------------
def test_a_damaged_latest_checkpoint_is_moved_aside(run_copy, finished_run):
  data = run_copy / checkpointing.LATEST_DIR / "40" / "state"
  biggest = max((p for p in data.rglob("*") if p.is_file()),
                key=lambda p: p.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[:100])  # Truncated.
  results = train.train_and_evaluate(_config(), str(run_copy))
  entries = os.listdir(run_copy / checkpointing.LATEST_DIR)
  [damaged] = [e for e in entries if e.startswith("40.damaged-")]
  assert (run_copy / checkpointing.LATEST_DIR / damaged / "state").is_dir()
  assert sorted(e for e in entries if e.isdigit()) == ["20", "40"]
  # Resumed from step 20; the best step 40 (kept) did not stop the save.
  assert os.listdir(run_copy / checkpointing.BEST_DIR) == ["40"]
  assert results["test"] == _results(finished_run)["test"]


def test_a_checkpoint_missing_a_file_is_called_damaged(run_copy):
  (run_copy / checkpointing.LATEST_DIR / "40" / "state" / "_METADATA").unlink()
  with pytest.raises(checkpointing.DamagedCheckpointError,
                     match=r"step 40 .* is incomplete or damaged: .*"
                     r"40/state/_METADATA is missing") as error:
    evaluate.evaluate_checkpoint(str(run_copy), checkpoint="latest")
  assert "different config" not in str(error.value)


# --- 7. A full disk ----------------------------------------------------------
def test_a_full_disk_is_one_clear_error(tmp_path, monkeypatch):
  config = _config(num_epochs=0, num_steps=2)
  usage = shutil.disk_usage(tmp_path)
  with monkeypatch.context() as patch:
    patch.setattr(checkpointing.shutil, "disk_usage",
                  lambda path: usage._replace(free=2**19))
    with pytest.raises(checkpointing.NoSpaceError,
                       match=rf"No space left on the device of {tmp_path}/a "
                       r"for the checkpoint of step 2: it needs about "
                       r"[\d.]+ MiB, 0.5 MiB free.*rerun the same command"
                       ) as error:
      train.train_and_evaluate(config, str(tmp_path / "a"))
  assert "\n" not in str(error.value)
  assert error.value.errno == errno.ENOSPC

  # The disk fills up while Orbax writes: its ENOSPC, however wrapped,
  # becomes the same one line.
  def no_space(*args, **kwargs):
    raise RuntimeError("save failed") from OSError(
        errno.ENOSPC, "No space left on device")
  with monkeypatch.context() as patch:
    patch.setattr(checkpointing.ocp.CheckpointManager, "save", no_space)
    with pytest.raises(checkpointing.NoSpaceError,
                       match=rf"device of {tmp_path}/b for the checkpoint of "
                       r"step 2: .* MiB free"):
      train.train_and_evaluate(config, str(tmp_path / "b"))
