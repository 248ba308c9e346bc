"""python -m jaxattn.summary prints per-module counts and a final total line."""

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO


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
  out, got_total, got_trainable = summary(config)
  assert (got_total, got_trainable) == (total, trainable)
  assert any("/" in line for line in out.splitlines()[1:-1])  # Submodules.


def test_summary_reports_frozen_parameters():
  _, total, trainable = summary("configs/cifar10_convvit.py",
                                "--config.frozen_params=embedding/.*")
  assert total - trainable == 8_192 + 416  # Position map + patch conv.
