"""End to end through main.py: smoke configs, resume, eval mode, bad input."""

import glob
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import jaxattn
from jaxattn import checkpointing, convert, train
from tests.conftest import REPO, once_per_process, run_main

# Every config file (configs/__init__.py makes them a package; no config).
CONFIGS = sorted(pathlib.Path(p).stem
                 for p in glob.glob(str(REPO / "configs" / "*.py"))
                 if not pathlib.Path(p).stem.startswith("_"))
# Real-speed compiles for the runs whose accuracy or timing matters.
FAST_ENV = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "0",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def _check_finished_run(workdir: pathlib.Path) -> None:
  results = json.loads((workdir / "results.json").read_text())
  assert results["final_step"] > 0
  assert os.listdir(workdir / checkpointing.LATEST_DIR)
  assert glob.glob(str(workdir / "events.out.tfevents.*"))
  assert (workdir / checkpointing.CONFIG_FILE).exists()


# quickstart's smoke run goes through main.py itself (`smoke_workdir` below).
@pytest.mark.parametrize("name", [c for c in CONFIGS if c != "quickstart"])
def test_smoke_variant_trains_and_evaluates(name, tmp_path):
  """Every config's smoke variant, through the trainer main.py calls (in this
  process: a main.py subprocess per config would spend ~10 s importing
  TensorFlow and JAX)."""
  workdir = tmp_path / "w"
  config = convert.load_config_file(f"{REPO}/configs/{name}.py:smoke")
  train.train_and_evaluate(config, str(workdir))
  _check_finished_run(workdir)


# The tests of one smoke run stay on one pytest-xdist worker (--dist loadgroup).
_SMOKE_WORKDIR_GROUP = pytest.mark.xdist_group("main_smoke_workdir")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  """(workdir, the console output) of one quickstart smoke run."""
  def make():
    workdir = tmp_path_factory.mktemp("quickstart_smoke")
    proc = run_main("--config=configs/quickstart.py:smoke",
                    f"--workdir={workdir}")
    return workdir, proc.stderr
  return once_per_process("main/smoke_run", make)


@pytest.fixture(scope="module")
def smoke_workdir(smoke_run):
  return smoke_run[0]


@_SMOKE_WORKDIR_GROUP
def test_quickstart_smoke_variant_runs_through_main(smoke_workdir):
  _check_finished_run(smoke_workdir)


@_SMOKE_WORKDIR_GROUP
def test_console_shows_the_run_not_the_libraries(smoke_run):
  """What was chosen, progress with ETA, the epoch's validation, where the
  results are; no library INFO lines (Orbax wrote ~1,800 of the
  quickstart's 1,993 lines)."""
  workdir, console = smoke_run
  lines = console.splitlines()
  # TensorFlow's C++ prints "oneDNN custom operations are on" at import on
  # CPUs where oneDNN is its default (Intel with AVX-512/AMX), before absl's
  # C++ log is set up: TF_CPP_MIN_LOG_LEVEL does not reach it and only
  # TF_ENABLE_ONEDNN_OPTS=0, which changes TF's kernels, would remove it.
  info_from = {line.split("]")[0].split()[-1].split(":")[0]
               for line in lines if re.match(r"I\d{4} ", line)
               and "oneDNN custom operations are on" not in line}
  assert info_from <= {"cpu_defaults.py", "compilation_cache.py", "main.py",
                       "cpu_layout.py", "train.py", "periodic.py",
                       "plots.py"}, info_from
  assert len(lines) < 30, console
  assert "Devices: " in console and "compute dtype float32" in console
  assert ("Data offline:digits: train 1,294 examples (train[:90%]), val 144 "
          "(train[90%:]), test 359 (test); 20 steps/epoch, 20 steps in "
          "all.") in console
  assert re.search(r"epoch 1/1 step 20/20 \(100%\) \| loss .* ETA 0s",
                   console)
  assert "Epoch 1, step 20: val {" in console
  assert (f"Results in {workdir}: results.json, metrics.csv, curves.png, "
          "confusion_matrix.png, checkpoints/, checkpoints_best/") in lines[-1]


@_SMOKE_WORKDIR_GROUP
def test_library_logs_brings_back_orbax_info_lines(smoke_workdir):
  proc = run_main("--mode=eval", f"--workdir={smoke_workdir}",
                  "--checkpoint=latest", "--split=test[:64]",
                  "--library_logs")
  assert re.search(r"^I\d{4} .* checkpoint_manager\.py:\d+\]", proc.stderr,
                   re.M), proc.stderr[-3000:]


@_SMOKE_WORKDIR_GROUP
def test_rerun_of_a_finished_run_does_nothing(smoke_workdir):
  before = sorted(os.listdir(smoke_workdir / checkpointing.LATEST_DIR))
  proc = run_main("--config=configs/quickstart.py:smoke",
                  f"--workdir={smoke_workdir}")
  assert "already complete" in proc.stderr
  assert sorted(os.listdir(smoke_workdir / checkpointing.LATEST_DIR)) == before


@_SMOKE_WORKDIR_GROUP
def test_eval_mode_writes_json(smoke_workdir):
  run_main("--mode=eval", f"--workdir={smoke_workdir}", "--checkpoint=latest",
           "--split=test[:101]")
  [path] = glob.glob(str(smoke_workdir / "eval_test__101_step*.json"))
  metrics = json.loads(pathlib.Path(path).read_text())
  assert metrics["num_examples"] == 101 and 0 <= metrics["accuracy"] <= 1
  proc = run_main("--mode=eval", f"--workdir={smoke_workdir}",
                  "--checkpoint=12345", check=False)
  assert proc.returncode != 0 and "No checkpoint at step 12345" in proc.stderr


@_SMOKE_WORKDIR_GROUP
def test_load_gives_the_evaluated_model(smoke_workdir):
  from jaxattn.data import pipeline, sources  # pylint: disable=g-import-not-at-top
  model, variables, config = jaxattn.load(str(smoke_workdir))
  src = sources.get_source(config.dataset)
  ds, _ = pipeline.create_eval_dataset(
      src, config.test_split, config,
      shard=pipeline.ProcessShard(0, 1, 512))
  batch = next(pipeline.as_numpy(ds))
  logits = model.apply(variables, batch["image"], train=False)
  n = int(batch["mask"].sum())
  accuracy = float(np.mean(np.argmax(logits[:n], -1) == batch["label"][:n]))
  results = json.loads((smoke_workdir / "results.json").read_text())
  np.testing.assert_allclose(accuracy, results["test"]["accuracy"], atol=1e-6)
  # A checkpoint directory works as well as the workdir.
  step = results["final_step"]
  _, same, _ = jaxattn.load(
      str(smoke_workdir / checkpointing.LATEST_DIR / str(step)))
  jax.tree.map(np.testing.assert_array_equal, same, variables)


def test_quickstart_trains_offline_to_95_percent(tmp_path):
  workdir = tmp_path / "qs"
  start = time.time()
  run_main("--config=configs/quickstart.py", f"--workdir={workdir}",
           env_extra=FAST_ENV)
  seconds = time.time() - start
  results = json.loads((workdir / "results.json").read_text())
  print(f"quickstart: {seconds:.0f} s, test {results['test']}")
  assert results["test"]["accuracy"] >= 0.95
  assert results["test"]["num_examples"] == 359


def _final_params(workdir):
  _, variables, _ = jaxattn.load(str(workdir))
  return variables


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
  args = ["--config=configs/quickstart.py", "--config.num_epochs=0",
          "--config.num_steps=60", "--config.checkpoint_every_steps=5",
          "--config.model.depth=1", "--config.log_every_steps=5"]
  straight = tmp_path / "straight"
  run_main(*args, f"--workdir={straight}", env_extra=FAST_ENV)

  killed = tmp_path / "killed"
  env = dict(os.environ, **FAST_ENV)
  proc = subprocess.Popen([sys.executable, str(REPO / "main.py"), *args,
                           f"--workdir={killed}"], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt_dir = killed / checkpointing.LATEST_DIR
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    steps = [int(d) for d in (os.listdir(ckpt_dir) if ckpt_dir.exists() else [])
             if d.isdigit()]
    if steps and max(steps) >= 15:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "training finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()]
  assert 15 <= max(steps) < 60

  resumed = run_main(*args, f"--workdir={killed}", env_extra=FAST_ENV)
  assert "Resumed from" in resumed.stderr
  a, b = _final_params(straight), _final_params(killed)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert (json.loads((straight / "results.json").read_text())["test"] ==
          json.loads((killed / "results.json").read_text())["test"])


def test_unknown_config_key_and_arg_are_reported(tmp_path):
  proc = run_main("--config=configs/quickstart.py:smoke",
                  f"--workdir={tmp_path}", "--config.num_epoch=3", check=False)
  assert proc.returncode != 0 and "num_epoch" in proc.stderr
  proc = run_main("--config=configs/quickstart.py:smok",
                  f"--workdir={tmp_path}", check=False)
  assert proc.returncode != 0
  assert "Unknown config argument 'smok'" in proc.stderr
  assert "smoke=False" in proc.stderr
