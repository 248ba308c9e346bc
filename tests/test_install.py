"""The wheel: it carries the configs and the command, and trains without a
checkout (the README's GPU-cluster and laptop installs rest on this)."""

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

from jaxattn import configlib
from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("install")]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  # Built from a copy: setuptools writes build/ and *.egg-info into the tree
  # it builds, which races with other workers' imports and builds.
  source = tmp_path_factory.mktemp("source") / "jaxattn"
  shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
      ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
  out = tmp_path_factory.mktemp("wheel")
  proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                         "-q", "-w", str(out), str(source)],
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  [path] = out.glob("jaxattn-*.whl")
  return path


def test_the_wheel_carries_every_config_and_the_command(wheel):
  names = zipfile.ZipFile(wheel).namelist()
  configs = sorted(p.name for p in (REPO / "configs").glob("*.py"))
  assert sorted(n.split("/")[-1] for n in names
                if n.startswith("jaxattn/configs/")) == configs
  [entry_points] = [n for n in names if n.endswith("entry_points.txt")]
  assert "jaxattn = jaxattn.main:run" in zipfile.ZipFile(wheel).read(
      entry_points).decode()


def test_an_installed_wheel_trains_a_bundled_config_by_name(wheel, tmp_path):
  site = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                  "--target", str(site), str(wheel)], check=True,
                 capture_output=True, timeout=600)
  env = dict(os.environ, PYTHONPATH=str(site), JAXATTN_COMPILATION_CACHE="0")
  # Outside the checkout: only the installed package can be imported.
  proc = subprocess.run(
      [sys.executable, "-m", "jaxattn.main", "--config=quickstart:smoke",
       "--config.num_epochs=0", "--config.num_steps=2",
       f"--workdir={tmp_path / 'run'}"], cwd=tmp_path, env=env,
      capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (tmp_path / "run" / "results.json").exists()
  where = subprocess.run(
      [sys.executable, "-c", "import jaxattn; print(jaxattn.__file__)"],
      cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
  assert pathlib.Path(where.stdout.strip()).is_relative_to(site)


def test_find_config_resolves_names_and_keeps_paths(tmp_path):
  assert configlib.find_config("quickstart:smoke") == (
      f"{REPO}/configs/quickstart.py:smoke")
  assert configlib.find_config("cifar10_convvit.py") == (
      f"{REPO}/configs/cifar10_convvit.py")
  assert configlib.find_config("configs/quickstart.py") == (
      "configs/quickstart.py")
  assert configlib.find_config("no_such_config") == "no_such_config"
  assert configlib.expand_bundled_config(
      ["main.py", "--config", "quickstart", "--config.seed=1"])[2] == (
          f"{REPO}/configs/quickstart.py")
  with pytest.raises(configlib.ConfigError, match="Bundled configs.*quickstart"):
    configlib.load("no_such_config")
