"""jaxattn.cpu_layout: on a CPU host whose device count jaxattn chose, the
mesh spans the device count measured fastest for the model, measured once
and cached, and always one that divides the batch sizes."""

import json
import os
import subprocess
import sys

import jax
import pytest

from jaxattn import configlib, cpu_defaults, cpu_layout, experiment
from tests.conftest import REPO

NUM_DEVICES = 4  # conftest's simulated devices.


@pytest.mark.parametrize("devices, batches, expected", [
    (2, (128, 64), [1, 2]),
    (3, (128, 64), [1, 2]),  # The old default: "must divide by 3".
    (6, (128, 256), [1, 2, 4]),
    (48, (240, 480), [1, 2, 4, 8, 16, 48]),  # Not every divisor.
    (12, (32, 64), [1, 2, 4, 8]),
    (48, (128, 64), [1, 2, 4, 8, 16, 32]),
    (4, (7, 64), [1]),
])
def test_candidates_divide_every_batch_size(devices, batches, expected):
  assert cpu_layout.candidates(devices, batches) == expected


@pytest.mark.parametrize("rates, expected", [
    ({1: 37.7, 2: 24.8}, 1),  # SL-ResNet-50 on the AMD host (issue 20).
    ({1: 512.0, 2: 592.0}, 2),  # conv_vit there.
    ({1: 100.0, 2: 102.0}, 1),  # A near tie: fewer devices.
    ({1: 10.0, 2: 30.0, 4: 30.5}, 2),
])
def test_pick_takes_the_fastest_and_fewer_devices_on_a_near_tie(rates,
                                                                expected):
  assert cpu_layout.pick(rates) == expected


def _config(**overrides):
  config = configlib.load(f"{REPO}/configs/quickstart.py:smoke")
  for key, value in overrides.items():
    config[key] = value
  # Resolved (classes, channels) from the dataset's metadata.
  return experiment.Experiment(config, data="metadata",
                               mesh_devices=NUM_DEVICES).config


def test_the_cache_key_follows_the_step_not_the_data_or_the_schedule():
  base = cpu_layout.cache_key(_config(), NUM_DEVICES)
  same = _config(dataset="mock:mnist", num_steps=7, num_epochs=0)
  same.schedule.lr = 0.5
  assert cpu_layout.cache_key(same, NUM_DEVICES) == base
  assert cpu_layout.cache_key(_config(batch_size=32), NUM_DEVICES) != base
  deeper = _config()
  deeper.model.depth += 1
  assert cpu_layout.cache_key(deeper, NUM_DEVICES) != base
  assert cpu_layout.cache_key(_config(), NUM_DEVICES + 1) != base


@pytest.fixture
def chosen_by_jaxattn(monkeypatch, tmp_path):
  """As if cpu_defaults had split the host into the 4 test devices."""
  monkeypatch.setattr(cpu_defaults, "_DONE", cpu_defaults.CpuSetup(
      True, "one per usable core (4)", cpu_devices=NUM_DEVICES))
  monkeypatch.setenv(cpu_layout.CACHE_VAR, str(tmp_path / "layout.json"))
  return tmp_path / "layout.json"


def test_the_layout_is_measured_once_then_read_from_the_cache(
    chosen_by_jaxattn, monkeypatch):
  config = _config(batch_size=16, eval_batch_size=16)
  layout = cpu_layout.choose(config, probe=True)
  assert layout.how == "measured now"
  assert sorted(layout.images_per_s) == [1, 2, 4]
  assert all(rate > 0 for rate in layout.images_per_s.values())
  assert layout.num_devices == cpu_layout.pick(layout.images_per_s)
  cached = json.loads(chosen_by_jaxattn.read_text())
  assert [entry["num_devices"] for entry in cached.values()] == [
      layout.num_devices]

  def no_second_probe(*args):
    raise AssertionError(f"probed again: {args}")

  monkeypatch.setattr(cpu_layout, "measure", no_second_probe)
  again = cpu_layout.choose(config, probe=True)
  assert again.num_devices == layout.num_devices
  assert again.how.startswith("measured before")
  exp = experiment.Experiment(config, data="none", probe_layout=True)
  assert exp.mesh.size == layout.num_devices


def test_a_feature_cached_head_is_timed_on_the_features(chosen_by_jaxattn,
                                                        monkeypatch):
  """Seed 000 with cached backbone outputs trains its head on them: the
  probe times that step, not the frozen ViT's."""
  config = configlib.load(f"{REPO}/configs/cifar10_hybrid.py:smoke",
                          {"cache_backbone_features": True})
  config = experiment.Experiment(config, data="metadata",
                                 mesh_devices=NUM_DEVICES).config
  shapes = []
  original = experiment.Experiment.synthetic_batch

  def spy(self, size, **kwargs):
    batch = original(self, size, **kwargs)
    shapes.append(batch["image"].shape[1:])
    return batch

  monkeypatch.setattr(experiment.Experiment, "synthetic_batch", spy)
  layout = cpu_layout.choose(config, probe=True)
  assert all(rate > 0 for rate in layout.images_per_s.values())
  feature_shape = tuple(experiment.get_interface(
      config.model.name).feature_shape(config))
  assert shapes and all(shape == feature_shape for shape in shapes), shapes


def test_without_a_probe_the_most_devices_that_divide_the_batches(
    chosen_by_jaxattn):
  layout = cpu_layout.choose(_config(batch_size=6, eval_batch_size=6),
                             probe=False)
  assert layout.num_devices == 3 and not layout.images_per_s


def test_a_batch_the_devices_do_not_divide_runs_on_fewer_of_them(
    chosen_by_jaxattn):
  config = _config(batch_size=6, eval_batch_size=10)  # 4 divides neither.
  exp = experiment.Experiment(config, data="none")
  assert exp.mesh.size == 2
  assert exp.shard.local_batch_size == 6  # No divisibility error.


def test_the_users_device_count_is_used_whole_and_checked():
  # conftest's 4 devices come from XLA_FLAGS: the user's choice.
  assert not cpu_layout.applies()
  exp = experiment.Experiment(_config(batch_size=6), data="none")
  assert exp.mesh.size == NUM_DEVICES
  with pytest.raises(ValueError, match="multiple of the number of devices "
                     r"\(4\).*your choice"):
    exp.shard  # pylint: disable=pointless-statement


@pytest.mark.skipif(cpu_defaults.usable_cores() < 2,
                    reason="one core: nothing to choose")
def test_a_fresh_process_probes_its_layout_and_logs_it(tmp_path):
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES", "PJRT_NPROC")}
  env[cpu_layout.CACHE_VAR] = str(tmp_path / "layout.json")
  command = [sys.executable, "-m", "jaxattn.bench",
             "--config=configs/quickstart.py:smoke", "--steps=1",
             "--eval_steps=0", "--warmup=0", "--nopeak",
             f"--json={tmp_path / 'bench.json'}"]
  proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "PJRT_NPROC" not in proc.stderr  # XLA's own thread counts.
  cores = cpu_defaults.usable_cores()
  assert "CPU layout: the mesh spans" in proc.stderr
  assert "measured now" in proc.stderr
  chosen = json.loads((tmp_path / "bench.json").read_text())["mesh_devices"]
  cached = json.loads((tmp_path / "layout.json").read_text())
  assert [e["num_devices"] for e in cached.values()] == [chosen]
  assert set(cached.popitem()[1]["images_per_s"]) == {
      str(k) for k in cpu_layout.candidates(cores, (64, 64))}
  assert jax.device_count() == NUM_DEVICES  # This process is untouched.
