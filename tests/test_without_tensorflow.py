"""Without the data extra (no TensorFlow, TFDS or TensorBoard) everything but
the input pipeline runs, and the pipeline says which extra it needs.

The entry points run in subprocesses, started together, whose Python finds
only what ``pip install -e ".[torch]"`` installs
(tests/without_tensorflow/sitecustomize.py); the run they load was trained
here, with TensorFlow.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from jaxattn import api, configlib, summary
from jaxattn.data import pipeline
from jaxattn.data.tf_import import tf
from tests.conftest import REPO, two_step_smoke_run

# One worker runs the module: its tests share the subprocesses' outputs.
pytestmark = pytest.mark.xdist_group("without_tensorflow")
# The entry points include to-torch: where PyTorch is absent (CI's Python
# 3.12 run) the module skips, as the converters' tests do; it runs in the
# Python 3.11 run.
pytest.importorskip("torch")

_BLOCKER = REPO / "tests" / "without_tensorflow"
_INSTALL = 'pip install "jaxattn[data]"'

# The library entry points, in one process: an Experiment on metadata with
# its model, state and steps on synthetic batches, jaxattn.load, predict,
# explain, to-torch, export; then training, which needs the extra.
_LIBRARY = """
import json, os, sys
import numpy as np
import jaxattn
from jaxattn import configlib, data, experiment, explain, predict
from jaxattn.convert import export, to_torch

workdir, image, out = sys.argv[1:]
results = {}
config = configlib.load("configs/quickstart.py:smoke")
exp = experiment.Experiment(config, data="metadata")
state = exp.init_state()
state, metrics = exp.train_fn(state, exp.synthetic_batch(8))
eval_metrics = exp.eval_fn(state, exp.synthetic_batch(8, with_mask=True))
results["train_loss"] = float(metrics.compute()["loss"])
results["eval_count"] = int(eval_metrics.loss.count)
model, variables, run_config = jaxattn.load(workdir)
images = np.linspace(-1, 1, 2 * 16 * 16, dtype=np.float32).reshape(2, 16, 16, 1)
results["load_logits"] = np.asarray(
    model.apply(variables, images, train=False)).tolist()
results["predict"] = predict.predict_files(workdir, [image], top_k=10)
results["explain"] = explain.explain(workdir, images=[image], out_dir=out,
                                     method="all")
converted = to_torch(workdir, os.path.join(out, "model.safetensors"))
results["to_torch"] = {k: converted[k] for k in ("out", "model")}
results["export"] = export.export_run(
    workdir, os.path.join(out, "model.jaxexport"))["out"]
try:
  experiment.Experiment(run_config, workdir=workdir)  # Reads the dataset.
except data.MissingDataExtra as e:
  results["train_error"] = str(e)
results["imported"] = sorted(
    m for m in sys.modules if m.startswith(("tensorflow", "tensorboard")))
print("RESULTS " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """The quickstart's smoke ViT trained for two steps, with TensorFlow."""
  return two_step_smoke_run(tmp_path_factory, "without_tensorflow/workdir")


@pytest.fixture(scope="module")
def digit_file(tmp_path_factory):
  """A real test digit as a PNG, and the same image through the evaluation
  pipeline (TensorFlow)."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  image = np.round(load_digits().images[-1] * (255 / 16)).astype(np.uint8)
  path = tmp_path_factory.mktemp("digit") / "digit.png"
  Image.fromarray(image).save(path)
  config = configlib.load(f"{REPO}/configs/quickstart.py:smoke")
  preprocessed = pipeline.preprocess_for_eval(tf.constant(image[..., None]),
                                              config).numpy()
  return str(path), preprocessed


def _without_tensorflow(*args, cwd=REPO):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [str(_BLOCKER), str(REPO), *filter(None, [env.get("PYTHONPATH")])])
  return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


@pytest.fixture(scope="module")
def runs(workdir, digit_file, tmp_path_factory):
  """name -> (returncode, stdout, stderr) of each command, run at once."""
  out = tmp_path_factory.mktemp("out")
  procs = {
      "import": _without_tensorflow(
          "-c", "import tensorflow_datasets"),
      "library": _without_tensorflow(
          "-c", _LIBRARY, str(workdir), digit_file[0], str(out)),
      "bench": _without_tensorflow(
          "-m", "jaxattn.bench", "--config=configs/quickstart.py:smoke",
          "--batch=8", "--eval_batch=8", "--steps=1", "--eval_steps=1",
          "--warmup=0", "--nopeak", f"--json={out / 'bench.json'}"),
      "summary": _without_tensorflow(
          "-m", "jaxattn.summary", "--config=configs/cifar10_convvit.py:smoke"),
      "main": _without_tensorflow(
          "main.py", "--config=configs/quickstart.py:smoke",
          f"--workdir={out / 'train'}"),
  }
  results = {}
  for name, proc in procs.items():
    stdout, stderr = proc.communicate(timeout=300)
    results[name] = (proc.returncode, stdout, stderr)
  results["out"] = out
  return results


def _ok(runs, name):
  returncode, stdout, stderr = runs[name]
  assert returncode == 0, (name, stderr[-3000:])
  return stdout


def test_the_subprocesses_cannot_import_tensorflow(runs):
  returncode, _, stderr = runs["import"]
  assert returncode != 0
  assert "No module named 'tensorflow_datasets'" in stderr


def test_the_library_runs_without_tensorflow(runs, workdir, digit_file):
  [line] = [l for l in _ok(runs, "library").splitlines()
            if l.startswith("RESULTS ")]
  results = json.loads(line.removeprefix("RESULTS "))
  assert results["imported"] == []
  assert np.isfinite(results["train_loss"]) and results["eval_count"] == 8

  # jaxattn.load: the logits of the run loaded with TensorFlow.
  model, variables, config = api.load(str(workdir))
  images = np.linspace(-1, 1, 2 * 16 * 16, dtype=np.float32).reshape(
      2, 16, 16, 1)
  logits = np.asarray(model.apply(variables, images, train=False))
  np.testing.assert_allclose(results["load_logits"], logits, atol=1e-5)

  # predict: the probabilities of the evaluation pipeline's image.
  expected = np.asarray(jax.nn.softmax(model.apply(
      variables, digit_file[1][None], train=False)))[0]
  [prediction] = results["predict"]
  got = {p["class"]: p["probability"] for p in prediction["top_k"]}
  np.testing.assert_allclose([got[c] for c in range(10)], expected, rtol=1e-4)

  # explain: gradcam and attention maps (a ViT).
  assert sorted(pathlib.Path(p).name for p in results["explain"]) == [
      "digit_attention.png", "digit_gradcam.png"]
  for path in results["explain"]:
    with Image.open(path) as image:
      assert image.format == "PNG"

  # to-torch and export.
  assert results["to_torch"]["model"] == "vit"
  assert os.path.getsize(results["to_torch"]["out"]) > 0
  with open(results["export"], "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  np.testing.assert_allclose(exported.call(images), logits, atol=1e-5)

  # Reading the dataset needs the extra.
  assert _INSTALL in results["train_error"]


def test_bench_runs_on_synthetic_batches(runs):
  _ok(runs, "bench")
  results = json.loads((runs["out"] / "bench.json").read_text())
  assert results["model"] == "vit" and results["example_shape"] == [16, 16, 1]
  assert results["train_images_per_s"] > 0 and results["eval_images_per_s"] > 0


def test_summary_counts_what_it_counts_with_tensorflow(runs):
  # mock:cifar10: its classes and channels from jaxattn's table.
  last = _ok(runs, "summary").strip().splitlines()[-1]
  _, total, trainable = summary.parameter_table(
      configlib.load(f"{REPO}/configs/cifar10_convvit.py:smoke"))
  assert last == f"total_params={total} trainable_params={trainable}"


def test_training_names_the_extra_in_one_line(runs):
  returncode, _, stderr = runs["main"]
  assert returncode == 1
  assert "Traceback" not in stderr
  [line] = [l for l in stderr.splitlines() if l.startswith("error: ")]
  assert "needs TensorFlow and TensorFlow Datasets" in line
  assert _INSTALL in line
  assert not (runs["out"] / "train").exists()  # Failed before any work.
