"""jaxattn.cpu_defaults: a JAX device per core on CPU-only hosts, yielding to
every setting of the user's, and leaving accelerator hosts alone."""

import os
import subprocess
import sys

import pytest

from jaxattn import cpu_defaults
from tests.conftest import REPO

_decide = cpu_defaults._decide  # pylint: disable=protected-access
_UNSET = -1  # jax_num_cpu_devices' default.


def test_cpu_host_gets_one_device_per_core_and_the_adopted_flags():
  setup = _decide({}, cores=6, num_cpu_devices_setting=_UNSET, plugins=[])
  assert setup.applied and setup.cpu_devices == 6
  assert setup.xla_flags_added == cpu_defaults.XLA_CPU_FLAGS


@pytest.mark.parametrize("environ, setting, why", [
    ({}, 3, "jax_num_cpu_devices=3"),
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}, _UNSET,
     "xla_force_host_platform_device_count"),
])
def test_the_users_device_count_wins(environ, setting, why):
  setup = _decide(environ, cores=6, num_cpu_devices_setting=setting,
                  plugins=[])
  assert setup.applied and setup.cpu_devices is None and why in setup.reason


def test_xla_keeps_its_own_client_threads():
  # The project's loops bound their dispatch instead (jaxattn/dispatch.py),
  # so XLA's pools are not oversubscribed; a user's PJRT_NPROC stays theirs.
  for environ in ({}, {"PJRT_NPROC": "5"}):
    setup = _decide(environ, cores=6, num_cpu_devices_setting=_UNSET,
                    plugins=[])
    assert setup.applied and setup.cpu_devices == 6
    assert not hasattr(setup, "client_threads")


def test_flags_the_user_named_are_not_added_again():
  for flag in cpu_defaults.XLA_CPU_FLAGS:
    name = flag.split("=")[0]
    setup = _decide({"XLA_FLAGS": f"{name}=mine"}, 2, _UNSET, [])
    assert all(not f.startswith(name + "=") for f in setup.xla_flags_added)


@pytest.mark.parametrize("environ, plugins, why", [
    ({}, ["jax_cuda12_plugin"], "accelerator plugins"),
    ({"JAX_PLATFORMS": "cuda"}, [], "JAX_PLATFORMS=cuda"),
    ({"JAXATTN_CPU_DEFAULTS": "0"}, [], "JAXATTN_CPU_DEFAULTS=0"),
])
def test_accelerator_hosts_and_opt_out_are_left_alone(environ, plugins, why):
  setup = _decide(environ, 6, _UNSET, plugins)
  assert not setup.applied and why in setup.reason
  assert setup.cpu_devices is None and not setup.xla_flags_added


def test_forcing_cpu_on_a_gpu_host_applies_them():
  setup = _decide({"JAX_PLATFORMS": "cpu"}, 4, _UNSET, ["jax_cuda12_plugin"])
  assert setup.applied and setup.cpu_devices == 4


def _device_count(env_extra: dict, *args: str) -> tuple[int, str]:
  """jax.device_count() in a fresh process after cpu_defaults.configure()."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES", "PJRT_NPROC")}
  env.update(env_extra)
  code = ("import sys; from absl import logging; logging.set_verbosity('info');"
          "logging.use_absl_handler();"
          "from jaxattn import cpu_defaults; import jax;"
          f"[jax.config.update('jax_num_cpu_devices', int(a)) for a in {args!r}];"
          "cpu_defaults.configure(); print(jax.device_count());"
          "import os; print(os.environ.get('XLA_FLAGS', ''),"
          "'PJRT_NPROC=' + os.environ.get('PJRT_NPROC', ''))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  return int(lines[0]), proc.stderr + (lines[1] if len(lines) > 1 else "")


def test_a_fresh_process_uses_every_core_and_logs_it():
  count, output = _device_count({})
  assert count == cpu_defaults.usable_cores()
  assert f"one per usable core ({count})" in output
  for flag in cpu_defaults.XLA_CPU_FLAGS:
    assert flag in output  # Appended to XLA_FLAGS before the backend.
  assert output.rstrip().endswith("PJRT_NPROC=")  # XLA's own threads.


def test_a_fresh_process_keeps_the_users_choice():
  assert _device_count({}, "3")[0] == 3
  assert _device_count({"JAXATTN_CPU_DEFAULTS": "0"})[0] == 1  # JAX's own.
