"""A Python with what ``pip install -e ".[torch]"`` installs, and no more:
no TensorFlow, TFDS or TensorBoard (the data extra), nor anything that only
they, or the test and wandb extras, bring in.

tests/test_without_tensorflow.py puts this directory first on the PYTHONPATH
of its subprocesses; Python imports ``sitecustomize`` at start-up. The
distributions allowed are those that pyproject.toml's dependencies and its
torch extra (the converter is tested) require, followed through the
installed packages' own requirements. A top-level module that only other
distributions provide is then not found, as on a host without them:
``import tensorflow`` raises ModuleNotFoundError and
``importlib.util.find_spec("tensorflow")`` is None.
"""

import importlib.machinery
import importlib.metadata
import pathlib
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

_PYPROJECT = pathlib.Path(__file__).resolve().parents[2] / "pyproject.toml"
_EXTRAS = ("torch",)
_TOOLS = ("pip", "setuptools", "wheel")  # The virtual environment's own.


def allowed_distributions() -> set[str]:
  """The distributions the core and _EXTRAS pull in, by canonical name."""
  project = tomllib.loads(_PYPROJECT.read_text())["project"]
  todo = [(text, "") for text in project["dependencies"]]
  todo += [(text, "") for extra in _EXTRAS
           for text in project["optional-dependencies"][extra]]
  seen = set()  # (distribution, extra it was asked for, or "").
  while todo:
    text, extra = todo.pop()
    requirement = Requirement(text)
    if requirement.marker and not requirement.marker.evaluate(
        {"extra": extra}):
      continue
    name = canonicalize_name(requirement.name)
    for wanted in ("", *sorted(requirement.extras)):
      if (name, wanted) in seen:
        continue
      seen.add((name, wanted))
      try:
        children = importlib.metadata.requires(requirement.name) or []
      except importlib.metadata.PackageNotFoundError:
        continue
      todo += [(child, wanted) for child in children]
  return ({name for name, _ in seen} | {canonicalize_name(project["name"])}
          | set(_TOOLS))


def blocked_modules(allowed: set[str]) -> frozenset[str]:
  """Top-level modules that no allowed distribution provides."""
  return frozenset(
      module for module, distributions in
      importlib.metadata.packages_distributions().items()
      if not any(canonicalize_name(d) in allowed for d in distributions))


_BLOCKED = blocked_modules(allowed_distributions())


class _PathFinderOfTheCore(importlib.machinery.PathFinder):

  @classmethod
  def find_spec(cls, fullname, path=None, target=None):
    if fullname.partition(".")[0] in _BLOCKED:
      return None
    return super().find_spec(fullname, path, target)


sys.meta_path[sys.meta_path.index(importlib.machinery.PathFinder)] = (
    _PathFinderOfTheCore)
