"""The package's command modules define their flags only when they run.

absl flags are process-global: two modules that define ``--config`` at import
time cannot be imported into one process (a test run, a notebook, the
converter importing ``jaxattn.summary``) without a DuplicateFlagError.
"""

import json
import pkgutil
import subprocess
import sys

import jaxattn
from tests.conftest import REPO

def _all_modules() -> list[str]:
  names = ["jaxattn"]
  for info in pkgutil.walk_packages(jaxattn.__path__, "jaxattn."):
    if info.name.startswith("jaxattn.torch_models") or info.name.endswith(
        "__main__"):
      continue  # torch is optional; __main__ modules run when imported.
    names.append(info.name)
  return names


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

