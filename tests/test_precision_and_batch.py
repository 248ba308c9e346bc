"""Numerics per platform, batch per device, and the device prefetch.

* ``compute_dtype="auto"`` resolves per platform, ``matmul_precision``
  reaches the traced step;
* the per-device batch warning and the linear learning-rate rule;
* ``parallel.prefetch_to_mesh`` gives the train step the same batches as
  placing each one when it is needed: same bytes, same order, on a resume
  too.
"""

import pathlib
import re

import jax
import numpy as np
import pytest

from jaxattn import configlib, experiment, optim, parallel, train
from jaxattn.configlib import ConfigError
from jaxattn.data import pipeline
from jaxattn.models import kernels

REPO = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------
# compute_dtype and matmul_precision.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("platform, dtype", [
    ("cpu", "float32"), ("gpu", "bfloat16"), ("cuda", "bfloat16"),
    ("rocm", "bfloat16"), ("tpu", "bfloat16")])
def test_auto_compute_dtype_per_platform(platform, dtype):
  assert experiment.resolve_compute_dtype("auto", platform) == dtype
  # An explicit dtype is kept on every platform.
  assert experiment.resolve_compute_dtype("float32", platform) == "float32"
  assert experiment.resolve_compute_dtype("bfloat16", platform) == "bfloat16"


def test_bad_numerics_values_name_the_choices():
  with pytest.raises(ConfigError, match="compute_dtype='fp16'.*auto"):
    experiment.resolve_compute_dtype("fp16", "cpu")
  with pytest.raises(ConfigError, match="matmul_precision='tf32'.*highest"):
    experiment.check_matmul_precision("tf32")


def _smoke(name="quickstart", **overrides):
  return configlib.load(f"{REPO}/configs/{name}.py:smoke", overrides)


def test_an_experiment_on_this_cpu_resolves_auto_to_float32():
  config = _smoke()
  assert config.compute_dtype == "auto"  # A user config: the default.
  exp = experiment.Experiment(config, data="metadata", mesh_devices=1)
  assert exp.config.compute_dtype == "float32"  # What config.json records.
  assert exp.model.dtype == np.float32
  params = jax.tree.leaves(exp.abstract_state.params)
  assert {p.dtype for p in params} == {np.dtype(np.float32)}


def test_the_seed_recipes_say_their_numerics():
  for name, precision in [("cifar10_convvit", "highest"),
                          ("cifar10_vit", "highest"),
                          ("mnist_se_cnn", "highest"),
                          ("cifar10_slresnet50", "default"),
                          ("food101_hybrid", "default")]:
    config = configlib.load(f"{REPO}/configs/{name}.py")
    assert config.compute_dtype == "float32", name
    assert config.matmul_precision == precision, name


@pytest.mark.parametrize("precision, platform, marker", [
    ("highest", "cuda", "HIGHEST"), ("high", "tpu", "HIGH"),
    ("default", "cuda", None),
    # XLA:CPU computes float32 in float32 anyway; the attribute only slows it.
    ("highest", "cpu", None)])
def test_matmul_precision_reaches_accelerator_steps(precision, platform,
                                                    marker):
  exp = experiment.Experiment(_smoke(matmul_precision=precision),
                              data="metadata", mesh_devices=1)
  step_kernels = kernels.resolve("auto", platform)
  text = exp.make_train_fn(donate=False, step_kernels=step_kernels).lower(
      exp.abstract_state, exp.synthetic_batch(16)).as_text()
  assert "dot_general" in text
  found = set(re.findall(r"precision = \[(\w+), \w+\]", text))
  assert found == ({marker} if marker else set()) | (found & {"DEFAULT"})
  if marker:
    assert marker in found


# ----------------------------------------------------------------------------
# Batch per device, learning rate per batch.
# ----------------------------------------------------------------------------
def test_a_small_batch_per_accelerator_is_warned_about():
  warning = train.small_batch_warning(32, 16, "cuda")
  assert "2 examples per device" in warning
  assert "--config.batch_size=128" in warning
  assert "scale_lr_with_batch" in warning
  assert train.small_batch_warning(128, 16, "cuda") is None
  assert train.small_batch_warning(16, 4, "cpu") is None  # Cores, not GPUs.


def test_scale_lr_with_batch_is_the_linear_rule():
  config = _smoke("cifar10_convvit")
  assert config.reference_batch_size == 128  # The seed's own batch.
  base = optim.create_learning_rate_fn(config, 100, 1000)
  config.batch_size = 512
  assert optim.lr_batch_scale(config) == 1.0  # Off unless asked for.
  config.scale_lr_with_batch = True
  assert optim.lr_batch_scale(config) == 4.0
  scaled = optim.create_learning_rate_fn(config, 100, 1000)
  for step in (0, 150, 420, 999):
    np.testing.assert_allclose(scaled(step), 4.0 * base(step), rtol=1e-6)
  config.reference_batch_size = -1
  with pytest.raises(ConfigError, match="reference_batch_size"):
    optim.lr_batch_scale(config)


# ----------------------------------------------------------------------------
# The device prefetch.
# ----------------------------------------------------------------------------
def test_prefetch_reads_ahead_by_its_size_and_keeps_the_order():
  exp = experiment.Experiment(_smoke(), data="metadata")
  local = [{"image": np.full((16, 2), i, np.float32),
            "label": np.arange(16) + i} for i in range(5)]
  read = []

  def source():
    for i, batch in enumerate(local):
      read.append(i)
      yield batch

  batches = parallel.prefetch_to_mesh(source(), exp.batch_sharding, size=2)
  first = next(batches)
  assert read == [0, 1, 2]  # The one taken and two placed behind it.
  assert first["image"].sharding == exp.batch_sharding
  out = [first, *batches]
  assert len(out) == 5  # The last ones drain when the source ends.
  for batch, want in zip(out, local):
    np.testing.assert_array_equal(np.asarray(batch["label"]), want["label"])


@pytest.mark.parametrize("start_step", [0, 5])
def test_prefetched_batches_are_the_pipeline_batches(start_step):
  """The loop's input (prefetched) equals the pipeline's batches placed one
  at a time: same bytes, same order, from the start and on a resume."""
  exp = experiment.Experiment(_smoke("cifar10_convvit"))
  steps = 4

  def plain():
    batches = pipeline.as_numpy(exp.train_dataset(start_step))
    return [parallel.global_batch(next(batches), exp.batch_sharding)
            for _ in range(steps)]

  prefetched = parallel.prefetch_to_mesh(
      pipeline.as_numpy(exp.train_dataset(start_step)), exp.batch_sharding,
      size=train.DEVICE_PREFETCH)
  for want in plain():
    got = next(prefetched)
    assert set(got) == set(want)
    for key in want:
      assert got[key].sharding == want[key].sharding
      np.testing.assert_array_equal(np.asarray(got[key]),
                                    np.asarray(want[key]))
