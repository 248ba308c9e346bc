"""The JAX versions jaxattn supports: pyproject's ranges, the CUDA extras, the
pinned sets CI tests, and no private JAX imports beyond the one guarded
helper that has no public equivalent."""

import pathlib
import re
import tomllib

from packaging.requirements import Requirement

from tests.conftest import REPO

_PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _requirements(lines) -> dict[str, Requirement]:
  return {Requirement(line).name: Requirement(line) for line in lines}


def _pins(path: pathlib.Path) -> dict[str, str]:
  pins = {}
  for line in path.read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if "==" in line:
      name, version = line.split("==", 1)
      pins[name.strip().lower().replace("_", "-")] = version.strip()
  return pins


def test_jax_and_jaxlib_admit_0_10_to_0_12():
  deps = _requirements(_PYPROJECT["project"]["dependencies"])
  for name in ("jax", "jaxlib"):
    spec = deps[name].specifier
    assert spec == deps["jax"].specifier
    assert "0.10.2" in spec and "0.12.1" in spec and "0.12.0.1" in spec
    assert "0.10.1" not in spec and "0.13.0" not in spec


def test_the_cuda_extras_follow_the_jax_range():
  extras = _PYPROJECT["project"]["optional-dependencies"]
  jax_spec = _requirements(_PYPROJECT["project"]["dependencies"])["jax"].specifier
  for extra, jax_extra in (("cuda12", "cuda12"), ("cuda13", "cuda13"),
                           ("cuda", "cuda12")):
    [requirement] = [Requirement(r) for r in extras[extra]]
    assert requirement.name == "jax" and requirement.extras == {jax_extra}
    assert requirement.specifier == jax_spec


def test_each_pinned_set_lies_inside_the_ranges():
  deps = _requirements(_PYPROJECT["project"]["dependencies"])
  for path in (REPO / "constraints.txt", REPO / "constraints-py312.txt"):
    pins = _pins(path)
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "clu"):
      assert pins[name] in deps[name].specifier, (path.name, name, pins[name])
    assert pins["jax"] == pins["jaxlib"], path.name  # One release.


def test_ci_installs_the_second_set_as_the_readme_says():
  ci = (REPO / ".ci" / "run").read_text()
  [command] = re.findall(r"^newer_install_cmd='(.*)'$", ci, re.MULTILINE)
  assert "constraints-py312.txt" in command
  assert f"`{command}`" in (REPO / "README.md").read_text()


def test_no_private_jax_imports_outside_the_guarded_helper():
  """jax._src changes without notice; cpu_defaults._backends_initialized is
  the one use, since JAX has no public way to ask whether its backends have
  started (jax-ml/jax issue 23320)."""
  users = []
  for path in (REPO / "jaxattn").rglob("*.py"):
    for line in path.read_text().splitlines():
      if "jax._src" in line and not line.lstrip().startswith("#"):
        users.append((path.relative_to(REPO).as_posix(), line))
  text = (REPO / "jaxattn" / "cpu_defaults.py").read_text()
  helper = text[text.index("def _backends_initialized"):]
  helper = helper[:helper.index("\ndef ")]
  assert "from jax._src import xla_bridge" in helper
  assert users and all(path == "jaxattn/cpu_defaults.py" and line in helper
                       for path, line in users), users
