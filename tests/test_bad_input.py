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


@pytest.mark.parametrize("command,config_args,message", [
    # main.py: a nested key names that level's keys and the closest one.
    ("main.py", [SMOKE, "--config.optimizer.nmae=adam"],
     "--config.optimizer.nmae: config.optimizer has no key 'nmae'. Did you "
     "mean --config.optimizer.name? Keys of config.optimizer: b1, b2, eps, "
     "momentum, name, nesterov, weight_decay, weight_decay_exclude."),
    # Every absl command defines --config the same way (summary: the
    # cheapest to start).
    ("-m jaxattn.summary", [SMOKE, "--config.batchsize=3"],
     "config has no key 'batchsize'. Did you mean --config.batch_size? "
     "Keys of config: augment, batch_size,"),
    # An unknown config argument: its message, without config_flags'
    # traceback around it.
    ("main.py", ["--config=configs/quickstart.py:smok"],
     "--config=configs/quickstart.py:smok: Unknown config argument 'smok' in "
     "'smok'. Valid arguments: smoke=False, model='vit', epochs=30, batch=64."),
], ids=["main_nested_key", "summary_key", "main_config_argument"])
def test_unknown_config_key_is_a_short_usage_error(tmp_path, command,
                                                   config_args, message):
  """It was a 51-line traceback naming no valid key."""
  workdir = tmp_path / "run"
  argv = [*command.split(), *config_args]
  if command == "main.py":
    argv.append(f"--workdir={workdir}")
  proc = subprocess.run([sys.executable, *argv], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert len(_stderr_lines(proc)) < 15, proc.stderr
  assert "Traceback" not in proc.stderr
  assert message in proc.stderr
  assert not workdir.exists()


def test_bad_input_during_the_run_is_one_line_traceback_on_request(tmp_path):
  """A locked workdir (any errors.BadInputError raised once the run has
  started) ended in a 20-line traceback whose last line was the message."""
  from jaxattn import workdir_lock  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  args = [SMOKE, f"--workdir={workdir}"]
  with workdir_lock.WorkdirLock(str(workdir)):  # Another run holds it.
    proc = run_main(*args, check=False, timeout=300)
    traced = run_main(*args, "--traceback", check=False, timeout=300)
  assert proc.returncode == 1, proc.stderr[-3000:]
  [line] = _stderr_lines(proc)
  assert line.startswith(f"error: {workdir} is in use by another training "
                         "run (")
  assert traced.returncode == 1
  assert "Traceback (most recent call last)" in traced.stderr
  assert ("jaxattn.workdir_lock.WorkdirLockedError: "
          f"{workdir} is in use") in traced.stderr


def test_predict_names_a_missing_workdir_in_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "jaxattn.predict", str(tmp_path / "nowhere"),
       "x.png"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert _stderr_lines(proc) == [
      f"error: Workdir {tmp_path / 'nowhere'} does not exist. Pass the "
      "--workdir of a training run (python main.py --config=... "
      "--workdir=DIR)."]


def test_converter_raises_bad_input_with_traceback_flag(tmp_path, capsys):
  from jaxattn import errors  # pylint: disable=g-import-not-at-top
  from jaxattn.convert import __main__ as cli  # pylint: disable=g-import-not-at-top
  argv = ["to-torch", str(tmp_path / "nowhere"), "--out",
          str(tmp_path / "x.safetensors")]
  assert cli.main(argv) == 2
  [line] = capsys.readouterr().err.splitlines()
  assert line.startswith("error: ")
  with pytest.raises(errors.BadInputError):
    cli.main([*argv, "--traceback"])


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


def _jpeg_folder(root, bad_name="broken.jpg"):
  """root/{train,test}/{a,b}/*.jpg, and a truncated JPEG in train/b."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for cls in ("a", "b"):
      (root / split / cls).mkdir(parents=True)
      for i in range(4):
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / split / cls / f"{i}.jpg")
  whole = (root / "train" / "a" / "0.jpg").read_bytes()
  bad = root / "train" / "b" / bad_name
  bad.write_bytes(whole[:len(whole) // 2])
  return bad


@pytest.mark.parametrize("stream", ["train", "eval"])
def test_corrupt_jpeg_in_a_folder_is_named(tmp_path, stream):
  """TensorFlow's error ("jpeg::Uncompress failed") named no file."""
  from jaxattn.data import pipeline, sources  # pylint: disable=g-import-not-at-top
  bad = _jpeg_folder(tmp_path)
  source = sources.get_source(f"folder:{tmp_path}")
  config = configlib.base_config()
  config.image_size, config.train_split = (8, 8), "train"
  shard = pipeline.ProcessShard(0, 1, 3)
  if stream == "train":
    ds = pipeline.create_train_dataset(source, config, shard=shard,
                                       steps_per_epoch=3, num_epochs=1)
  else:
    ds, _ = pipeline.create_eval_dataset(source, "train", config, shard=shard)
  with pytest.raises(sources.DatasetError) as error:
    list(pipeline.as_numpy(ds))
  first_line, named = str(error.value).splitlines()
  assert first_line == (f"1 image file(s) of folder:{tmp_path} (split "
                        "'train') cannot be decoded:")
  # (PIL's reason in the parentheses.)
  assert named.startswith(f"  {bad}: not a readable image (")
  assert named.endswith("); remove it, or re-save it as PNG or JPEG.")


def test_cmyk_jpeg_for_a_grayscale_model_is_named_as_such(tmp_path):
  """It was "not an image TensorFlow can decode"; it is a CMYK JPEG, which
  TensorFlow cannot turn into one channel."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  from jaxattn import inference  # pylint: disable=g-import-not-at-top
  path = tmp_path / "scan.jpg"
  Image.new("CMYK", (8, 8), (0, 0, 0, 128)).save(path)
  config = configlib.base_config()
  config.num_channels, config.image_size = 1, (8, 8)
  with pytest.raises(inference.InputError,
                     match=r"scan.jpg: a CMYK JPEG \(4 channels\).*1-channel "
                     r"images.*convert it, e\.g\. PIL\.Image\.open\(f\)"
                     r"\.convert\('L'\)\.save\(f\)"):
    inference.read_images([str(path)], config)
  # Three channels it decodes, as PIL would convert it.
  config.num_channels = 3
  assert inference.read_images([str(path)], config).shape == (1, 8, 8, 3)
