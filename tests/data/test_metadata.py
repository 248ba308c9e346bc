"""The metadata known without TFDS is the metadata TFDS and the sources give."""

import pytest

from jaxattn import configlib, experiment
from jaxattn.data import DatasetError, MissingDataExtra, metadata, sources
from tests.conftest import REPO


@pytest.mark.parametrize("dataset", [
    *(f"{kind}:{name}" for name in metadata.TFDS_DATASETS
      for kind in ("tfds", "mock")),
    *(f"offline:{name}" for name in metadata.OFFLINE_DATASETS)])
def test_the_table_agrees_with_the_sources(dataset):
  kind, _, name = dataset.partition(":")
  # What Experiment(data="metadata") uses with TFDS installed.
  source = (sources.MockSource(name) if kind == "tfds"
            else sources.get_source(dataset))
  known = metadata.known(dataset)
  if kind == "tfds":  # MockSource makes varying sizes 64 x 64; TFDS: None.
    assert known.image_shape == metadata.TFDS_DATASETS[name][0]
    assert known.image_shape[2] == source.image_shape[2]
  else:
    assert known.image_shape == tuple(source.image_shape)
  assert known.num_classes == source.num_classes
  assert known.name == dataset


def test_unknown_datasets_are_not_guessed():
  for dataset in ("tfds:imagenet2012", "folder:/data", "mine:pets",
                  "offline:mnist"):
    assert metadata.known(dataset) is None
  with pytest.raises(DatasetError, match="not known without reading"):
    metadata.known("tfds:cifar10").num_examples("train")


def _without_tensorflow(monkeypatch):
  """experiment's view of jaxattn.data on a host without the data extra."""
  def missing(*unused_args, **unused_kwargs):
    raise MissingDataExtra("No module named 'tensorflow'")
  monkeypatch.setattr(sources, "MockSource", missing)
  monkeypatch.setattr(experiment, "get_source", missing)


def test_metadata_experiments_resolve_without_tensorflow(monkeypatch):
  _without_tensorflow(monkeypatch)
  config = configlib.load(f"{REPO}/configs/cifar10_convvit.py:smoke")  # mock:cifar10
  exp = experiment.Experiment(config, data="metadata")
  assert (exp.config.num_classes, exp.config.num_channels) == (10, 3)
  assert exp.steps_per_epoch == experiment.NOMINAL_STEPS_PER_EPOCH
  config = configlib.load(f"{REPO}/configs/aircraft_slresnet50.py")  # folder:, 1000
  assert experiment.metadata_source(config).image_shape == (None, None, 3)
  config.num_classes = 0  # Nothing fixes the classes: the extra is named.
  with pytest.raises(MissingDataExtra, match=r'pip install "jaxattn\[data\]"'):
    experiment.metadata_source(config)
