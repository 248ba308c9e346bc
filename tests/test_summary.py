"""python -m jaxattn.summary prints per-module counts and a final total line.

The counts are checked in this process through the function the command
prints (`summary.parameter_table`, config files loaded as `--config` loads
them); one test runs the command itself. A subprocess per config would
spend ~10 s of each test importing TensorFlow and JAX again.
"""

import re
import subprocess
import sys

import pytest

from jaxattn import convert
from jaxattn import summary as summary_lib
from tests.conftest import REPO


def counts(spec: str, **overrides: str) -> tuple[list, int, int]:
  """The table of `--config=spec --config.KEY=VALUE ...`, in this process."""
  config = convert.load_config_file(str(REPO / spec), overrides)
  return summary_lib.parameter_table(config)


def summary(config: str, *flags: str) -> tuple[str, int, int]:
  proc = subprocess.run(
      [sys.executable, "-m", "jaxattn.summary", f"--config={config}", *flags],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
  last = proc.stdout.strip().splitlines()[-1]
  match = re.fullmatch(r"total_params=(\d+) trainable_params=(\d+)", last)
  assert match, proc.stdout[-2000:]
  return proc.stdout, int(match[1]), int(match[2])


B8 = 86_576_872  # The frozen ViT-B/8 backbone of seed 000.


@pytest.mark.parametrize("config,total,trainable", [
    ("configs/cifar10_convvit.py", 59_818, 59_818),
    ("configs/mnist_vit.py", 6_339_082, 6_339_082),
    ("configs/cifar10_vit.py", 6_351_114, 6_351_114),
    ("configs/cifar100_vit.py", 6_374_244, 6_374_244),
    ("configs/mnist_se_cnn.py", 354_446, 354_178),
    ("configs/mnist_sa_cnn.py", 356_525, 356_257),
    ("configs/cifar10_slresnet50.py", 46_763_560, 46_763_560),
    ("configs/cifar100_slresnet50.py:depth=101", 83_581_480, 83_581_480),
    ("configs/cifar10_slresnet50.py:depth=152", 113_905_192, 113_905_192),
    ("configs/aircraft_slresnet50.py:data=/nonexistent", 46_763_560,
     46_763_560),
    ("configs/cifar10_hybrid.py", B8 + 2_580_582, 2_580_582),
    ("configs/cifar100_hybrid.py", B8 + 2_586_522, 2_586_522),
    ("configs/cars196_hybrid.py", B8 + 2_592_858, 2_592_858),
])
def test_summary_counts(config, total, trainable):
  table, got_total, got_trainable = counts(config)
  assert (got_total, got_trainable) == (total, trainable)
  assert sum(row[1] for row in table) == total
  assert any("/" in module for module, _, _ in table)  # Submodules.


def test_summary_reports_frozen_parameters():
  _, total, trainable = counts("configs/cifar10_convvit.py",
                               frozen_params="embedding/.*")
  assert total - trainable == 8_192 + 416  # Position map + patch conv.


def test_command_prints_the_table_and_a_total_line():
  # A bundled config's bare name, as main.py takes it.
  out, total, trainable = summary("mnist_se_cnn:smoke")
  table, want_total, want_trainable = counts("configs/mnist_se_cnn.py:smoke")
  assert (total, trainable) == (want_total, want_trainable)
  lines = out.strip().splitlines()
  assert lines[0].split() == ["module", "params", "trainable"]
  assert len(lines) == len(table) + 2
  assert any("/" in line for line in lines[1:-1])  # Submodules.
