"""Every config loads; the seed configs build the seeds' exact models."""

import pytest

from jaxattn import configlib, experiment
from tests.conftest import REPO


def load_config(name, arg=None):
  path = REPO / "configs" / f"{name}.py"
  assert "python main.py --config=configs/" + name in path.read_text()
  return configlib.load(f"{path}:{arg}" if arg else str(path))


def param_count(config):
  """Parameters of the config's model, with classes/channels of its data
  (the TFDS builder's metadata: nothing is downloaded)."""
  assert config.dataset.startswith("tfds:")
  return experiment.Experiment(config, data="metadata").num_params()


@pytest.mark.parametrize("name,expected", [
    ("cifar10_convvit", 59_818),
    ("mnist_vit", 6_339_082),
    ("cifar10_vit", 6_351_114),
    ("cifar100_vit", 6_374_244),
])
def test_seed_configs_build_the_seed_models(name, expected):
  assert param_count(load_config(name)) == expected


def test_seed004_recipe_details():
  c = load_config("cifar10_convvit")
  assert (c.batch_size, c.eval_batch_size, c.num_epochs) == (128, 64, 25)
  assert c.optimizer.name == "adamw" and c.optimizer.weight_decay == 0.01
  assert c.optimizer.eps == 1e-8 and c.grad_clip_norm == 1.0
  assert [tuple(k) for k in c.schedule.knots] == [
      (0, 0), (10, 0.01), (20, 0.0005), (25, 0)]
  assert c.compute_dtype == "float32"  # bf16 measured 4.2 points lower.
  assert tuple(c.augment.crop_scale) == (0.75, 1.0)
  assert (c.augment.rand_augment_ops, c.augment.rand_augment_magnitude) == (1, 8)
  assert c.augment.random_erasing == 0.25


@pytest.mark.parametrize("name", ["mnist_vit", "cifar10_vit", "cifar100_vit"])
def test_seed002_recipe_details(name):
  c = load_config(name)
  assert c.batch_size == 32 and c.optimizer.name == "adam"
  assert c.schedule.name == "constant" and c.schedule.lr == 1e-4
  assert tuple(c.pixel_mean) == (0.0,) and tuple(c.pixel_std) == (1.0,)
  assert c.num_epochs == (5 if name == "mnist_vit" else 25)
  assert c.augment.random_resized_crop == (name != "mnist_vit")


def test_config_arguments_are_typed():
  c = load_config("cifar10_convvit", "epochs=5,batch=64")
  assert c.num_epochs == 5 and c.batch_size == 64
  assert c.schedule.knots[1][0] == 2.0  # The one-cycle follows the length.
  with pytest.raises(configlib.ConfigError,
                     match="Valid arguments: smoke=False"):
    load_config("cifar10_convvit", "epoch=5")
