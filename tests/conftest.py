"""Test-wide JAX setup: 4 simulated CPU devices, the project's XLA:CPU
options, and cheap compiles.

Both must be set before JAX initialises its backend, hence at import time of
the first conftest. Subprocesses started by tests inherit the environment.
"""

import atexit
import os
import pathlib
import shutil
import sys
import tempfile

from jaxattn import cpu_defaults  # noqa: E402  (imports no JAX)

# The XLA:CPU options the commands run with (cpu_defaults.XLA_CPU_FLAGS), so
# that every numerical test checks the outputs users get.
os.environ["XLA_FLAGS"] = " ".join([
    *cpu_defaults.XLA_CPU_FLAGS, *os.environ.get("XLA_FLAGS", "").split(),
    "--xla_force_host_platform_device_count=4"])
# Two XLA CPU client threads per device. The project's loops keep at most a
# few steps in flight (jaxattn/dispatch.py) and need no more than XLA's own
# max(cores, devices); a test's own loop may dispatch ahead without bound,
# which with one thread per device can deadlock in an all-reduce.
os.environ.setdefault("PJRT_NPROC", str(max(2 * 4,
                                            cpu_defaults.usable_cores())))
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# No test downloads weights from the internet: a name (config.init_from) that
# a test does not serve itself from 127.0.0.1 fails at once (port 9 refuses
# connections), into a cache of the session's own.
os.environ.setdefault("JAXATTN_WEIGHTS_URL", "http://127.0.0.1:9")
if "JAXATTN_WEIGHTS_CACHE" not in os.environ:
  _WEIGHTS_DIR = tempfile.mkdtemp(prefix="jaxattn_weights_")
  os.environ["JAXATTN_WEIGHTS_CACHE"] = _WEIGHTS_DIR
  atexit.register(shutil.rmtree, _WEIGHTS_DIR, ignore_errors=True)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One persistent XLA compilation cache for the session, shared with the
# main.py subprocesses: many tests compile the same smoke programs again
# (resume, preemption, eval), and loading them is ~2x faster than compiling.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE_DIR = tempfile.mkdtemp(prefix="jaxattn_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
  atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CIFAR_TAR = SHARED / "data" / "cifar10" / "cifar10-train-jpeg.tar.gz"


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
  return REPO


_ONCE: dict = {}


def once_per_process(key: str, make):
  """make()'s value, computed once per test process.

  For the expensive training runs behind module fixtures: pytest-xdist
  tears a module's fixtures down whenever a worker does not yet know its
  next test, and would train them again for the module's later tests.
  """
  if key not in _ONCE:
    _ONCE[key] = make()
  return _ONCE[key]


def two_step_smoke_run(tmp_path_factory, key: str) -> pathlib.Path:
  """A workdir of the quickstart's smoke ViT trained for two steps (no
  evaluation), once per test process and ``key``."""
  def make():
    # pylint: disable=g-import-not-at-top
    from jaxattn import configlib, train
    config = configlib.load(f"{REPO}/configs/quickstart.py:smoke")
    with config.unlocked():
      config.num_epochs, config.num_steps = 0, 2
      config.val_split = config.test_split = ""
    path = tmp_path_factory.mktemp(key.replace("/", "_"))
    train.train_and_evaluate(config, str(path))
    return path
  return once_per_process(key, make)


def run_main(*args: str, timeout: int = 600, check: bool = True,
             env_extra: dict | None = None):
  """Runs `python main.py ARGS` in a subprocess; returns CompletedProcess."""
  import subprocess  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, **(env_extra or {}))
  proc = subprocess.run([sys.executable, str(REPO / "main.py"), *args],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"main.py {' '.join(args)} failed "
                         f"({proc.returncode}):\n{proc.stderr[-6000:]}")
  return proc


class PreemptedAt:
  """Stands in for distributed.PreemptionWatch (monkeypatch it onto the
  module): as if SIGTERM arrived during `step`."""

  def __init__(self, step):
    self._step = step

  def __call__(self):
    return self

  def should_stop(self, step):
    return step >= self._step

  def close(self):
    pass


@pytest.fixture(scope="session")
def cifar_folder(tmp_path_factory) -> pathlib.Path:
  """The shared CIFAR-10 training JPEGs, extracted once (skips if absent)."""
  if not CIFAR_TAR.exists():
    pytest.skip(f"{CIFAR_TAR} is not available")
  import tarfile  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("cifar10")
  with tarfile.open(CIFAR_TAR) as tar:
    tar.extractall(root, filter="data")
  return root
