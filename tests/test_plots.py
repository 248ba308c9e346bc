"""Training curves from event files, and confusion-matrix pictures."""

import numpy as np
import pytest
from clu import metric_writers
from PIL import Image

from jaxattn import configlib, plots
from tests.conftest import REPO


def test_curves_of_a_resumed_run_keep_the_later_writes(tmp_path):
  # A run logs steps 10..50, is killed after its checkpoint at 30, and the
  # resumed run logs 40 and 50 again (new values) and goes on to 60.
  first = metric_writers.create_default_writer(str(tmp_path))
  for step in (10, 20, 30, 40, 50):
    first.write_scalars(step, {"train_loss": 1.0 / step,
                               "train_learning_rate": 0.1})
  first.write_scalars(30, {"val_accuracy": 0.5})
  first.close()
  resumed = metric_writers.create_default_writer(str(tmp_path))
  for step in (40, 50, 60):
    resumed.write_scalars(step, {"train_loss": 2.0 / step})
  resumed.close()

  scalars = plots.read_scalars(str(tmp_path))

  steps, values = scalars["train_loss"]
  np.testing.assert_array_equal(steps, [10, 20, 30, 40, 50, 60])
  np.testing.assert_allclose(values, [0.1, 0.05, 1 / 30, 0.05, 0.04, 1 / 30])
  assert scalars["val_accuracy"][0].tolist() == [30]
  fig = plots.curves_figure(scalars, title="t", mark_step=30)
  path = plots.save_png(fig, str(tmp_path / "curves.png"))
  with Image.open(path) as image:
    assert image.size == (1200, 360)


def test_confusion_figure_adds_an_other_column_only_when_used(tmp_path):
  counts = np.array([[5, 1, 0], [2, 3, 0]])  # No prediction beyond 2 classes.
  fig = plots.confusion_figure(counts, ["cat", "dog"], title="val")
  assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["cat", "dog"]
  counts[1, 2] = 4  # A 1000-logit head predicted a class the data lacks.
  fig = plots.confusion_figure(counts, ["cat", "dog"])
  assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [
      "cat", "dog", "other"]
  assert "15 images, top-1 accuracy 53.33%" in fig.axes[0].get_title()
  rgb = plots.to_rgb_array(fig)
  assert rgb.dtype == np.uint8 and rgb.shape[-1] == 3


def test_the_seed_curve_is_drawn_beside_a_reproducing_config():
  from jaxattn import recipes  # pylint: disable=g-import-not-at-top

  config = configlib.load(f"{REPO}/configs/cifar10_convvit.py")
  ref = plots.reference_curve(config, steps_per_epoch=351)
  assert ref.tag == "val_accuracy" and "seed 004" in ref.label
  assert list(ref.steps[[0, -1]]) == [351, 25 * 351]
  assert ref.values[-1] == 0.6506
  assert tuple(ref.values) == recipes.SEED004_TEST_ACCURACY
  scalars = {"val_accuracy": (np.array([351, 702]), np.array([0.3, 0.35]))}
  fig = plots.curves_figure(scalars, reference=ref)
  [accuracy_axes] = [ax for ax in fig.axes
                     if ax.get_title() == "top-1 accuracy"]
  labels = [line.get_label() for line in accuracy_axes.get_lines()]
  assert labels == ["validation", ref.label]
  # Another schedule or a smoke run is not the seed's: no curve.
  for arg in ("epochs=10", "smoke"):
    other = configlib.load(f"{REPO}/configs/cifar10_convvit.py:{arg}")
    assert plots.reference_curve(other, 351) is None
  config.reference_curve.tag = "val_acc"
  with pytest.raises(ValueError, match="reference_curve.tag='val_acc'.*"
                     "val_accuracy"):
    plots.reference_curve(config, 351)
