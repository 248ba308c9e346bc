"""In-process checks of train_and_evaluate: bad input fails early and clearly."""

import os

import pytest

from jaxattn import checkpointing, train
from jaxattn.data import sources
from tests.conftest import REPO


def _smoke_config():
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "quickstart", REPO / "configs" / "quickstart.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("smoke")


@pytest.mark.parametrize("key,value,error,match", [
    ("model.name", "vitt", ValueError, r"Unknown model 'vitt'.*conv_vit.*vit"),
    ("dataset", "tfds:not_a_dataset", sources.DatasetError, "not found"),
    ("train_split", "training", sources.DatasetError,
     r"config.train_split='training'.*one of \['train', 'test'\]"),
    ("val_split", "train[95%:200%]", sources.DatasetError, "Cannot use split"),
    ("image_size", (18, 18), ValueError, "18x18 is not divisible by patch_size=4"),
    ("batch_size", 6, ValueError, "multiple of the number of devices"),
    ("batch_size", 4096, ValueError, "exceeds the"),
    ("num_classes", 3, ValueError, "has 10 classes"),
    ("pixel_mean", (0.5, 0.5), ValueError, "1 channel"),
    ("parallel", "pjit", ValueError, "'jit' or 'pmap'"),
])
def test_bad_input_is_reported(tmp_path, key, value, error, match):
  config = _smoke_config()
  section, _, field = key.rpartition(".")
  (config[section] if section else config)[field] = value
  with pytest.raises(error, match=match):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / checkpointing.LATEST_DIR) or not [
      d for d in os.listdir(tmp_path / checkpointing.LATEST_DIR)]


def test_unknown_model_option(tmp_path):
  config = _smoke_config()
  config.model.hidden = 3
  with pytest.raises(ValueError, match=r"no option\(s\) \['hidden'\].*hidden_dim"):
    train.train_and_evaluate(config, str(tmp_path))


def test_a_workdir_refuses_another_model_and_keeps_its_checkpoint(tmp_path):
  config = _smoke_config()
  config.num_epochs = 0
  config.num_steps = 2
  train.train_and_evaluate(config, str(tmp_path))
  steps_before = os.listdir(tmp_path / checkpointing.LATEST_DIR)
  other = _smoke_config()
  other.model.hidden_dim = 32
  with pytest.raises(ValueError, match="use a new --workdir"):
    train.train_and_evaluate(other, str(tmp_path))
  assert os.listdir(tmp_path / checkpointing.LATEST_DIR) == steps_before


def test_early_stopping_stops_when_validation_stalls(tmp_path):
  config = _smoke_config()
  config.num_epochs = 10
  config.batch_size = 64
  config.schedule.name, config.schedule.lr = "constant", 0.0  # Never improves.
  config.schedule.warmup_epochs = 0.0
  config.early_stopping_patience = 2
  results = train.train_and_evaluate(config, str(tmp_path))
  steps_per_epoch = 1293 // 64  # train[:90%] of the 1,437 digits.
  assert results["stopped_early"]
  assert results["final_step"] == 3 * steps_per_epoch
  assert results["best_step"] == steps_per_epoch
  # The run is finished: rerunning returns at once with the same results.
  assert train.train_and_evaluate(config, str(tmp_path)) == results
