"""jaxattn.accelerator_check: a run that JAX put on the CPU although an
accelerator plugin is installed stops with the fix, unless the CPU was asked
for."""

import os
import subprocess
import sys

import pytest

from jaxattn import accelerator_check
from tests.conftest import REPO


def _problem(backend="cpu", plugins=("xla_cuda13",),
             distributions=(("jax-cuda13-pjrt", "0.12.1"),
                            ("jax-cuda13-plugin", "0.12.1")),
             environ=None, jaxlib="0.10.2"):
  return accelerator_check.problem(
      plugins=list(plugins), distributions=list(distributions),
      backend=backend, environ=environ or {}, jax_version=jaxlib,
      jaxlib_version=jaxlib)


def test_a_plugin_of_another_release_on_the_cpu_names_the_fix():
  why = _problem()
  assert "JAX came up on the CPU" in why
  assert "jax-cuda13-plugin 0.12.1" in why and "jaxlib 0.10.2" in why
  assert "is not jaxlib's release (0.10.2)" in why
  assert 'pip install -e ".[cuda13]"' in why and "driver 580" in why
  assert "JAX_PLATFORMS=cpu" in why and "--allow_cpu" in why


def test_a_plugin_of_jaxlibs_release_is_not_called_stale():
  why = _problem(distributions=[("jax-cuda12-plugin", "0.12.1")],
                 plugins=["xla_cuda12"], jaxlib="0.12.1")
  assert "not jaxlib's release" not in why
  assert '".[cuda12]"' in why and "driver 525" in why


def test_an_unknown_accelerator_gets_the_general_advice():
  why = _problem(plugins=["libtpu"], distributions=[("libtpu", "0.0.30")])
  assert "libtpu 0.0.30" in why and "not jaxlib's release" not in why
  assert "JAX's installation guide" in why


@pytest.mark.parametrize("kwargs", [
    dict(backend="gpu"),  # The plugin works.
    dict(plugins=[], distributions=[]),  # A CPU-only install.
    dict(environ={"JAX_PLATFORMS": "cpu"}),  # The CPU was asked for.
])
def test_nothing_to_say(kwargs):
  assert _problem(**kwargs) is None


def test_a_platform_list_that_allows_a_fallback_is_still_checked():
  assert _problem(environ={"JAX_PLATFORMS": "cuda,cpu"}) is not None


def test_check_raises_or_with_allow_cpu_warns(monkeypatch):
  # This process runs on the CPU; pretend a CUDA 13 plugin is installed.
  monkeypatch.setattr(accelerator_check.cpu_defaults, "accelerator_plugins",
                      lambda: ["xla_cuda13"])
  monkeypatch.setattr(accelerator_check, "plugin_distributions",
                      lambda: [("jax-cuda13-plugin", "0.0.1")])
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  with pytest.raises(accelerator_check.AcceleratorFallbackError,
                     match=r"jax-cuda13-plugin 0\.0\.1"):
    accelerator_check.check()
  accelerator_check.check(allow_cpu=True)  # Only a warning.
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  accelerator_check.check()


def test_plugin_distributions_finds_none_here():
  # The test environment is CPU-only; the pattern must not take jax/jaxlib.
  names = [n for n, _ in accelerator_check.plugin_distributions()]
  assert "jax" not in names and "jaxlib" not in names
  for name in ("jax-cuda12-plugin", "jax_cuda13_pjrt", "jax-rocm7-plugin",
               "libtpu", "jax-metal"):
    assert accelerator_check._PLUGIN_DISTRIBUTION.match(name), name  # pylint: disable=protected-access
  for name in ("jax", "jaxlib", "jaxtyping", "jax-cuda"):
    assert not accelerator_check._PLUGIN_DISTRIBUTION.match(name), name  # pylint: disable=protected-access


def test_main_stops_when_a_plugin_fails_to_load(tmp_path):
  """End to end: a jax_plugins module whose initialize() fails (as one built
  for another jaxlib does) makes JAX fall back to the CPU; main.py stops
  before it loads any data."""
  plugin = tmp_path / "plugins" / "jax_plugins" / "xla_cuda13"
  plugin.mkdir(parents=True)
  (plugin / "__init__.py").write_text(
      "def initialize():\n"
      "  raise RuntimeError('simulated: built for another jaxlib')\n")
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  env["PYTHONPATH"] = os.pathsep.join(
      [str(tmp_path / "plugins"), str(REPO), env.get("PYTHONPATH", "")])
  proc = subprocess.run(
      [sys.executable, "main.py", "--config=configs/quickstart.py:smoke",
       f"--workdir={tmp_path / 'run'}"], cwd=REPO, env=env,
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  # Bad input for the run: one line, no traceback of jaxattn's (JAX's own
  # plugin warning above it keeps its traceback).
  assert "\nerror: JAX came up on the CPU" in proc.stderr, proc.stderr[-3000:]
  assert "AcceleratorFallbackError" not in proc.stderr
  assert "xla_cuda13" in proc.stderr and '".[cuda13]"' in proc.stderr
  assert not (tmp_path / "run" / "results.json").exists()
