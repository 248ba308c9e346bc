"""predict and explain on a real (smoke) quickstart workdir, and the pictures
that training and --mode=eval write."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from clu import metric_writers
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from jaxattn import (checkpointing, configlib, evaluate, experiment, explain,
                     inference, parallel, plots, predict, train)
from jaxattn.data import pipeline
from tests.conftest import REPO, once_per_process

# One pytest-xdist worker runs the whole module: its tests share `workdir`.
pytestmark = pytest.mark.xdist_group("predict")

_DIGITS = 4  # Test-split digits written as PNG files.


def _load_config(arg="smoke"):
  return configlib.load(f"{REPO}/configs/quickstart.py:{arg}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """The quickstart's smoke run (1 epoch, one ViT block), trained here."""
  def make():
    path = tmp_path_factory.mktemp("quickstart_smoke")
    train.train_and_evaluate(_load_config(), str(path))
    return path
  return once_per_process("predict/workdir", make)


@pytest.fixture(scope="module")
def digit_files(workdir, tmp_path_factory):
  """The first test digits as PNGs in <class>/ folders, and the same images
  as the evaluation pipeline gives them."""
  config = checkpointing.load_config(str(workdir))
  source = experiment.get_source(config)
  ds, _ = pipeline.create_eval_dataset(
      source, "test", config, shard=pipeline.ProcessShard(0, 1, _DIGITS))
  batch = next(pipeline.as_numpy(ds))
  raw = next(source.read("test").batch(_DIGITS).as_numpy_iterator())
  root = tmp_path_factory.mktemp("digits")
  files = []
  for i, (image, label) in enumerate(zip(raw["image"], raw["label"])):
    (root / str(label)).mkdir(exist_ok=True)
    files.append(str(root / str(label) / f"digit{i}.png"))
    Image.fromarray(image[..., 0]).save(files[-1])
  return files, batch


def test_predict_equals_evaluation_on_the_same_images(workdir, digit_files):
  files, batch = digit_files
  results = predict.predict_files(str(workdir), files, top_k=3)
  run = inference.load_run(str(workdir))
  expected = jax.nn.softmax(run.model.apply(run.variables, batch["image"]))
  for result, probs, path in zip(results, np.asarray(expected), files):
    assert result["file"] == path
    top = result["top_k"]
    assert [p["class"] for p in top] == list(probs.argsort()[::-1][:3])
    assert [p["name"] for p in top] == [str(p["class"]) for p in top]
    np.testing.assert_allclose([p["probability"] for p in top],
                               np.sort(probs)[::-1][:3], rtol=1e-4)
  text = predict.format_text(results)
  assert files[0] in text and "%" in text


def test_explain_writes_an_overlay_per_image_and_method(workdir, digit_files,
                                                        tmp_path):
  files, _ = digit_files
  paths = explain.explain(str(workdir), images=files, misclassified=2,
                          method="all", out_dir=str(tmp_path))
  names = [pathlib.Path(f).stem for f in files] + ["train_90_"]
  assert len(paths) == 2 * (len(files) + 2)  # gradcam + attention (a ViT).
  for path in paths:
    assert any(os.path.basename(path).startswith(n) for n in names), path
    with Image.open(path) as image:
      assert image.format == "PNG"
      heads = 4 if path.endswith("_attention.png") else 0
      assert image.size == plots.explanation_size(heads)


@pytest.mark.parametrize("kwargs,message", [
    (dict(method="cam"), "does not apply to model 'vit'.*--method=gradcam"),
    (dict(layer="transformer_encoder_7"), "not a module.*transformer_encoder_0"),
    (dict(images=["/no/such.png"]), "not found: /no/such.png"),
    (dict(images=[]), "Nothing to explain"),
])
def test_explain_errors_name_the_problem_and_the_fix(workdir, digit_files,
                                                     tmp_path, kwargs, message):
  kwargs = dict(dict(images=digit_files[0][:1], out_dir=str(tmp_path)),
                **kwargs)
  with pytest.raises(inference.InputError, match=message):
    explain.explain(str(workdir), **kwargs)


def test_workdirs_without_a_model_are_refused(tmp_path, workdir):
  with pytest.raises(inference.InputError, match="does not exist"):
    inference.load_run(str(tmp_path / "missing"))
  with pytest.raises(inference.InputError, match="not a jaxattn workdir"):
    inference.load_run(str(tmp_path))
  (tmp_path / checkpointing.CONFIG_FILE).write_text(
      (workdir / checkpointing.CONFIG_FILE).read_text())
  with pytest.raises(inference.InputError, match="no checkpoint yet: train"):
    inference.load_run(str(tmp_path))


def test_command_lines(workdir, digit_files, tmp_path):
  """Both commands through `python -m` (shell globs after --images too),
  started together to halve the wait."""
  files, _ = digit_files
  commands = {
      "predict": ["jaxattn.predict", str(workdir), *files[:2], "--json",
                  "--top_k=2"],
      "explain": ["jaxattn.explain", str(workdir), "--images", *files[:2],
                  "--out", str(tmp_path), "--method=attention"]}
  procs = {name: subprocess.Popen([sys.executable, "-m", *args], cwd=REPO,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
           for name, args in commands.items()}
  outputs = {name: proc.communicate(timeout=300)
             for name, proc in procs.items()}
  for name, proc in procs.items():
    assert proc.returncode == 0, (name, outputs[name][1][-3000:])
  results = json.loads(outputs["predict"][0])
  assert [r["file"] for r in results] == files[:2]
  assert all(len(r["top_k"]) == 2 for r in results)
  assert sorted(os.listdir(tmp_path)) == sorted(
      f"{pathlib.Path(f).stem}_attention.png" for f in files[:2])
  assert outputs["explain"][0].split() == [
      str(tmp_path / f"{pathlib.Path(f).stem}_attention.png")
      for f in files[:2]]


# ----------------------------------------------------------------------------
# What training (write_run_report) and --mode=eval write.
# ----------------------------------------------------------------------------
def test_run_report_writes_curves_and_a_sharded_confusion_matrix(workdir):
  run = inference.load_run(str(workdir), "latest")
  config = run.config
  exp = experiment.Experiment(config, workdir=str(workdir))
  assert exp.mesh.size == 4  # The batch really is split (tests/conftest.py).
  variables = jax.device_put(run.variables, parallel.replicated(exp.mesh))
  writer = metric_writers.create_default_writer(str(workdir))
  written = plots.write_run_report(exp, str(workdir), variables, writer,
                                   run.step)
  writer.close()
  assert written == {"curves": str(workdir / plots.CURVES_FILE),
                     "confusion": str(workdir / plots.CONFUSION_FILE)}
  for path in written.values():
    with Image.open(path) as image:
      assert image.format == "PNG" and min(image.size) > 300

  counts = plots.confusion_counts(exp, variables, "test")
  results = json.loads((workdir / train.RESULTS_FILE).read_text())
  assert counts.sum() == results["test"]["num_examples"] == 359
  assert np.trace(counts) / counts.sum() == pytest.approx(
      results["test"]["accuracy"], abs=1e-6)

  tags = set()
  for path in workdir.glob("events.out.tfevents.*"):
    events = event_accumulator.EventAccumulator(str(path))
    events.Reload()
    tags.update(events.Tags()["tensors"])
  assert {"curves", "confusion_matrix"} <= tags


def test_eval_mode_writes_its_confusion_matrix(workdir):
  results = evaluate.evaluate_checkpoint(str(workdir), checkpoint="latest",
                                         split="test[:50]")
  path = workdir / f"confusion_test__50_step{results['step']}.png"
  assert results["confusion_path"] == str(path)
  with Image.open(path) as image:
    assert image.format == "PNG"
  assert (workdir / plots.CURVES_FILE).exists()
