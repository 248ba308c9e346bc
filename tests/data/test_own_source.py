"""A dataset kind registered from a module of one's own (config.source_modules)."""

import json
import os

import numpy as np
import pytest

from jaxattn import checkpointing, configlib, experiment, train
from jaxattn.data import sources
from tests.conftest import REPO

MODULE = "tests.data.my_source_module"


def _config(*overrides):
  """The quickstart smoke config on `mine:stripes`, as the command line
  ``--config.source_modules=... --config.dataset=mine:stripes`` gives it."""
  config = configlib.load(f"{REPO}/configs/quickstart.py:smoke", [
      f'source_modules=("{MODULE}",)', "dataset=mine:stripes",
      "train_split=train", "val_split=test", "test_split=", "batch_size=16",
      "eval_batch_size=16", *overrides])
  assert config.source_modules == (MODULE,)
  return config


def test_experiment_resolves_the_registered_source():
  exp = experiment.Experiment(_config())
  assert exp.source.name == "mine:stripes"
  assert exp.config.num_classes == 3
  assert exp.config.class_names == ["left", "middle", "right"]
  assert exp.config.num_channels == 3
  assert exp.num_train_examples == 48 and exp.steps_per_epoch == 3
  assert exp.input_shape[-3:] == (16, 16, 3)  # Resized to config.image_size.
  batch = next(iter(exp.eval_dataset("test")[0].as_numpy_iterator()))
  assert batch["image"].shape == (16, 16, 16, 3)
  assert list(batch["label"][:4]) == [0, 1, 2, 0]


def test_two_training_steps_on_the_registered_source(tmp_path):
  config = _config("num_epochs=0", "num_steps=2", "eval_crop_fraction=0.875")
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results["final_step"] == 2
  assert 0.0 <= results["val"]["accuracy"] <= 1.0
  with open(tmp_path / checkpointing.CONFIG_FILE) as f:
    saved = json.load(f)
  assert saved["source_modules"] == [MODULE]
  assert saved["class_names"] == ["left", "middle", "right"]
  # A saved workdir config (explain --misclassified) finds the source again.
  source = experiment.get_source(checkpointing.load_config(str(tmp_path)))
  assert source.name == "mine:stripes" and source.num_examples("test") == 16
  assert os.listdir(tmp_path / checkpointing.LATEST_DIR)


def test_unknown_kind_lists_the_known_ones():
  experiment.get_source(_config())  # Imports MODULE: 'mine' is registered.
  with pytest.raises(sources.DatasetError) as e:
    sources.get_source("mien:stripes")
  message = str(e.value)
  assert "Unknown dataset kind 'mien'" in message
  for usage in ("'tfds:NAME'", "'folder:PATH'", "'offline:digits'",
                "'mock:NAME'", "'mine:...'"):
    assert usage in message
  assert "register_source" in message and "config.source_modules" in message
  assert {"tfds", "folder", "offline", "mock", "mine"} <= set(
      sources.known_kinds())


def test_duplicate_reserved_and_malformed_kinds_are_refused():
  experiment.get_source(_config())
  make = lambda name, **options: None
  with pytest.raises(ValueError, match=r"'mine' is already registered \(by "
                     r"tests\.data\.my_source_module\.make_source\)"):
    sources.register_source("mine", make)
  with pytest.raises(ValueError, match=r"'tfds' is built in and reserved"):
    sources.register_source("tfds", make)
  for kind in ("", "a:b", "my data", 3):
    with pytest.raises(ValueError, match="must be a non-empty name"):
      sources.register_source(kind, make)
  with pytest.raises(TypeError, match="must be callable"):
    sources.register_source("other", "not a function")
  assert "other" not in sources.known_kinds()


def test_a_factory_must_return_a_data_source(monkeypatch):
  # Registered in a copy of the registry, which the test then drops.
  monkeypatch.setattr(sources, "_KINDS", dict(sources._KINDS))  # pylint: disable=protected-access
  kind = "returns_none"
  sources.register_source(kind, lambda name, **options: None)
  with pytest.raises(TypeError, match=f"{kind!r} returned NoneType, not a "
                     "jaxattn.data.sources.DataSource"):
    sources.get_source(f"{kind}:x")


def test_a_module_that_cannot_be_imported_names_the_key():
  config = _config()
  config.source_modules = (MODULE, "tests.data.no_such_source_module")
  with pytest.raises(sources.DatasetError,
                     match=r"config\.source_modules: cannot import "
                     r"'tests\.data\.no_such_source_module' \(No module "
                     r"named .*\)\. List importable module names, e\.g\. "
                     r"--config\.source_modules="):
    experiment.Experiment(config)


def test_the_source_reads_process_shares():
  experiment.get_source(_config())
  source = sources.get_source("mine:other")
  labels = [
      [int(x["label"]) for x in source.read("test", process_index=p,
                                            process_count=3)
       .as_numpy_iterator()] for p in range(3)]
  assert [len(part) for part in labels] == [6, 5, 5]
  assert sum(labels, []) == list(np.arange(16) % 3)
