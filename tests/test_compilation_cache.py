"""The persistent compilation cache: where it goes, and that runs use it."""

import os
import subprocess
import sys

from jaxattn import compilation_cache
from tests.conftest import REPO


def test_default_is_per_user_and_workdir_independent():
  assert compilation_cache.decide({"XDG_CACHE_HOME": "/c"}, None) == (
      "/c/jaxattn/xla")
  home = os.path.expanduser("~")
  assert compilation_cache.decide({}, None) == os.path.join(
      home, ".cache", "jaxattn", "xla")


def test_jax_setting_and_env_override_and_off():
  assert compilation_cache.decide({}, "/jax/own") is None  # JAX's option wins.
  env = {compilation_cache.ENV: "/shared/xla", "XDG_CACHE_HOME": "/c"}
  assert compilation_cache.decide(env, None) == "/shared/xla"
  for off in ("0", "off", "OFF", "false"):
    assert compilation_cache.decide({compilation_cache.ENV: off}, None) is None


def test_a_second_run_reads_its_steps_from_the_cache(tmp_path):
  """main.py's train step lands in the cache; a rerun in a new workdir hits it."""
  cache = tmp_path / "cache"
  env = dict(os.environ, JAXATTN_COMPILATION_CACHE=str(cache),
             JAX_COMPILATION_CACHE_DIR="")
  env.pop("JAX_COMPILATION_CACHE_DIR")
  command = [sys.executable, "main.py", "--config=quickstart:smoke",
             "--config.num_epochs=0", "--config.num_steps=2",
             "--config.val_split=", "--config.test_split="]
  for run in ("a", "b"):
    proc = subprocess.run([*command, f"--workdir={tmp_path / run}"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if run == "a":
      entries = set(os.listdir(cache))
      assert entries, "nothing was cached"
  assert set(os.listdir(cache)) == entries  # The rerun compiled nothing new.


def test_a_multi_process_cpu_job_runs_without_the_cache(monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top
  assert not compilation_cache.off_for_multiprocess_cpu()  # One process.
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  before = jax.config.jax_enable_compilation_cache
  try:
    jax.config.update("jax_enable_compilation_cache", True)
    assert compilation_cache.off_for_multiprocess_cpu()
    assert not jax.config.jax_enable_compilation_cache
  finally:
    jax.config.update("jax_enable_compilation_cache", before)
