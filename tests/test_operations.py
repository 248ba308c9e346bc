"""Operations of a real run: a profiler trace of chosen steps, and
Weights & Biases logging (offline) beside TensorBoard."""

import glob
import os

import pytest

from jaxattn import configlib, train
from tests.conftest import REPO


def _config(**overrides):
  config = configlib.load(f"{REPO}/configs/quickstart.py:smoke", overrides)
  return config


def test_profile_steps_traces_those_steps_into_the_workdir(tmp_path):
  config = _config(num_epochs=0, num_steps=4, val_split="", test_split="",
                   profile_steps="(2,2)")
  train.train_and_evaluate(config, str(tmp_path))
  traces = glob.glob(str(tmp_path / "plugins" / "profile" / "*" / "*.xplane.pb"))
  assert traces, os.listdir(tmp_path)


def test_no_trace_by_default(tmp_path):
  train.train_and_evaluate(_config(num_epochs=0, num_steps=2, val_split="",
                                   test_split=""), str(tmp_path))
  assert not os.path.exists(tmp_path / "plugins" / "profile")


def test_profile_steps_must_start_at_step_one_or_later(tmp_path):
  with pytest.raises(ValueError, match=r"profile_steps=\(0, 3\)"):
    train.train_and_evaluate(_config(num_epochs=0, num_steps=2,
                                     profile_steps="(0,3)"), str(tmp_path))


def test_wandb_offline_logs_the_run_beside_tensorboard(tmp_path, monkeypatch):
  pytest.importorskip("wandb")
  monkeypatch.setenv("WANDB_SILENT", "true")
  config = _config(num_epochs=0, num_steps=4, log_every_steps=2,
                   wandb_project="jaxattn-test", wandb_mode="offline")
  train.train_and_evaluate(config, str(tmp_path))
  [run_dir] = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
  [log] = glob.glob(os.path.join(run_dir, "*.wandb"))
  # The scalars reached the run's record (for `wandb sync`), the curves and
  # the confusion matrix its media.
  record = open(log, "rb").read()
  assert b"train_loss" in record and b"val_accuracy" in record
  media = os.listdir(os.path.join(run_dir, "files", "media", "images"))
  assert any(m.startswith("curves") for m in media)
  assert glob.glob(str(tmp_path / "events.out.tfevents.*"))  # TensorBoard too.


def test_a_bad_wandb_mode_is_reported(tmp_path):
  pytest.importorskip("wandb")
  with pytest.raises(ValueError, match="wandb_mode='sometimes'"):
    train.train_and_evaluate(_config(num_epochs=0, num_steps=2,
                                     wandb_project="p",
                                     wandb_mode="sometimes"), str(tmp_path))
