"""The package's command modules define their flags only when they run.

absl flags are process-global: two modules that define ``--config`` at import
time cannot be imported into one process (a test run, a notebook, the
converter importing ``jaxattn.summary``) without a DuplicateFlagError.
"""

import importlib.util
import json
import pkgutil
import subprocess
import sys

import jaxattn
from tests.conftest import REPO


def _needs_torch(name: str) -> bool:
  # The PyTorch twins (models/<family>/pytorch.py) and torch_models import
  # torch at the top; torch is an optional extra.
  return name.startswith("jaxattn.torch_models") or name.endswith(".pytorch")


def _all_modules() -> list[str]:
  have_torch = importlib.util.find_spec("torch") is not None
  names = ["jaxattn"]
  for info in pkgutil.walk_packages(jaxattn.__path__, "jaxattn."):
    if info.name.endswith("__main__"):
      continue  # __main__ modules run when imported.
    if _needs_torch(info.name) and not have_torch:
      continue
    names.append(info.name)
  return names


def test_the_module_list_holds_the_torch_twins_exactly_when_torch_is_there():
  twins = [n for n in _all_modules() if n.endswith(".pytorch")]
  if importlib.util.find_spec("torch") is None:
    assert not twins
  else:
    assert "jaxattn.models.conv_vit.pytorch" in twins


def test_importing_every_module_defines_no_command_flags():
  # A fresh interpreter: this test process may already hold flags.
  code = ("import importlib, json\nfrom absl import flags\n"
          "before = set(flags.FLAGS)\n"
          f"for name in {_all_modules()!r}:\n"
          "  importlib.import_module(name)\n"
          "print(json.dumps(sorted(set(flags.FLAGS) - before)))\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  new_flags = json.loads(proc.stdout.strip().splitlines()[-1])
  # JAX and TF register their own (jax_*, tf-internal); ours would be these.
  ours = {"config", "mode", "batch", "steps", "json", "images", "method",
          "out", "top_k", "checkpoint", "workdir"}
  assert not ours & set(new_flags), sorted(ours & set(new_flags))

