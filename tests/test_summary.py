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


@pytest.mark.parametrize("config,total", [
    ("configs/cifar10_convvit.py", 59_818),
    ("configs/mnist_vit.py", 6_339_082),
    ("configs/cifar10_vit.py", 6_351_114),
    ("configs/cifar100_vit.py", 6_374_244),
])
def test_summary_counts(config, total):
  out, got_total, trainable = summary(config)
  assert got_total == total and trainable == total
  assert "layers_0/attn/q" in out or "transformer_encoder_0" in out


def test_summary_reports_frozen_parameters():
  _, total, trainable = summary("configs/cifar10_convvit.py",
                                "--config.frozen_params=embedding/.*")
  assert total - trainable == 8_192 + 416  # Position map + patch conv.
