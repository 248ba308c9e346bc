"""python -m jaxattn.bench: the CLI runs and reports sensible figures.

Smoke configs and a handful of steps: these check the keys, units and the
relations between the numbers, never a speed (timings are the benchmarks'
business, see benchmarks/README.md).
"""

import json
import subprocess
import sys

import pytest

from jaxattn import bench, configlib
from tests.conftest import REPO

_TRAIN_KEYS = {
    "command", "config", "mode", "cpu", "cpu_count", "platform",
    "device_count", "jax_version", "model", "compute_dtype", "num_params",
    "batch_size", "example_shape", "lower_s", "compile_s", "train_steps",
    "train_step_s", "train_images_per_s", "train_images_per_s_best",
    "train_flops_per_image", "train_flops_per_s", "eval_batch_size",
    "eval_compile_s", "eval_step_s", "eval_images_per_s",
    "eval_flops_per_image", "peak_rss_mib",
    "host_matmul_flops_per_s_float32", "host_matmul_flops_per_s_bfloat16",
    "train_fraction_of_matmul_peak"}


def _run_bench(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "jaxattn.bench", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=300)


def _load_config(spec: str):
  return configlib.load(f"{REPO}/{spec}")


def test_cli_train_mode_writes_every_figure(tmp_path):
  out = tmp_path / "bench.json"
  proc = _run_bench("--config=configs/cifar10_convvit.py:smoke", "--steps=2",
                    "--eval_steps=1", "--warmup=1", "--batch=16",
                    "--peak_size=256", f"--json={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(out.read_text())
  assert _TRAIN_KEYS <= set(results), _TRAIN_KEYS - set(results)
  assert "train_images_per_s" in proc.stdout  # Also printed.
  assert results["config"] == "configs/cifar10_convvit.py:smoke"
  assert results["model"] == "conv_vit" and results["batch_size"] == 16
  assert results["example_shape"] == [32, 32, 3]
  assert results["device_count"] == 4  # tests/conftest.py's devices.
  assert results["compile_s"] > 0 and results["lower_s"] > 0
  assert 0 < results["train_step_s"]
  assert results["train_images_per_s"] == pytest.approx(
      16 / results["train_step_s"])
  assert results["train_images_per_s_best"] >= results["train_images_per_s"]
  # A train step (forward, backward, update) costs more than a forward
  # pass; both are counted over all 4 devices, per image.
  assert results["train_flops_per_image"] > results[
      "eval_flops_per_image"] > 0
  assert results["train_flops_per_s"] == pytest.approx(
      results["train_flops_per_image"] * results["train_images_per_s"])
  assert results["eval_batch_size"] == 16  # The smoke config's.
  assert results["peak_rss_mib"] > 100
  # The physical limit: 4 devices x 2 * 256^3 FLOPs per timed round.
  assert results["host_matmul_flops_per_s_float32"] > 1e8
  assert results["host_matmul_flops_per_s_bfloat16"] > 1e8
  # A fraction of the peak of the step's own compute dtype.
  assert results["train_fraction_of_matmul_peak"] == pytest.approx(
      results["train_flops_per_s"] /
      results[f"host_matmul_flops_per_s_{results['compute_dtype']}"])


def test_cli_names_the_configs_when_one_is_missing():
  proc = _run_bench("--config=configs/no_such_config.py")
  assert proc.returncode != 0
  assert "no_such_config.py" in proc.stderr
  assert "cifar10_convvit.py" in proc.stderr  # The ones that exist.


def test_cli_rejects_zero_steps():
  proc = _run_bench("--config=configs/cifar10_convvit.py:smoke", "--steps=0")
  assert proc.returncode != 0 and "--steps=0" in proc.stderr


def test_pipeline_mode_times_the_training_input():
  config = _load_config("configs/cifar10_convvit.py:smoke")  # mock:cifar10
  results = bench.bench_pipeline(config, batch_size=16, num_batches=4,
                                 warmup=2)
  assert results["pipeline_batches"] == 4 and results["batch_size"] == 16
  assert results["pipeline_images_per_s"] == pytest.approx(
      4 * 16 / results["pipeline_s"])
  assert results["steps_per_epoch"] == 256 // 16  # Mock train split.
  assert not results["pipeline_from_cache"]  # Warm-up shorter than an epoch.


def test_cached_hybrid_head_is_fed_backbone_logits():
  config = _load_config("configs/cifar10_hybrid.py:smoke")
  config.cache_backbone_features = True
  built = bench.build_steps(config, batch_size=8)
  assert built.example_shape == (1000,)
  assert built.eval is None  # eval_batch_size=0 skips it.
  built.train.run()
  built.train.run()  # The donated state carries over.
  assert built.train.flops > 0
