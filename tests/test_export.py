"""``python -m jaxattn.convert export``: a trained run -> a jax.export file.

A two-step quickstart run is exported through the CLI; the deserialized
program gives the Flax model's logits (``inference.output_logits``) on
batches of 3 and 5 images (symbolic batch) or exactly N (``--batch_size``),
runs from the file alone in a fresh process as the sidecar's ``call`` says,
and bad input fails with what to do.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxattn import checkpointing, inference
from jaxattn.convert import __main__ as cli
from tests.conftest import two_step_smoke_run

# One pytest-xdist worker runs the whole module: its tests share `workdir`.
pytestmark = pytest.mark.xdist_group("export")

ATOL = 1e-5


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """The quickstart's smoke ViT trained for two steps (no evaluation)."""
  return str(two_step_smoke_run(tmp_path_factory, "export/workdir"))


def _images(n, seed=0):
  """Preprocessed NHWC inputs: [0, 1] pixels normalised by (0.5, 0.5)."""
  u = np.random.default_rng(seed).uniform(size=(n, 16, 16, 1))
  return ((u - 0.5) / 0.5).astype(np.float32)


def _flax_logits(run, images):
  output = run.model.apply(run.variables, images, train=False)
  return np.asarray(inference.output_logits(output, run.loss_spec))


def _deserialize(path):
  with open(path, "rb") as f:
    return jax.export.deserialize(bytearray(f.read()))


def test_export_gives_the_flax_logits_for_any_batch(workdir, tmp_path,
                                                    capsys):
  out = str(tmp_path / "model.jaxexport")
  assert cli.main(["export", workdir, "--out", out]) == 0
  printed = capsys.readouterr().out
  assert f"Wrote {out}" in printed and "float32[b, 16, 16, 1]" in printed
  assert "exported.call(images)" in printed

  exported = _deserialize(out)
  (in_aval,), (out_aval,) = exported.in_avals, exported.out_avals
  assert str(in_aval.shape[0]) == "b" and in_aval.shape[1:] == (16, 16, 1)
  assert str(out_aval.shape[0]) == "b" and out_aval.shape[1:] == (10,)
  assert exported.platforms == ("cpu", "cuda")
  run = inference.load_run(workdir, "best")
  for n in (3, 5):
    images = _images(n, seed=n)
    got = np.asarray(exported.call(images))
    assert got.shape == (n, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, _flax_logits(run, images), atol=ATOL)
  with pytest.raises(ValueError, match="Expected value >= 1"):
    exported.call(_images(0))

  with open(out + ".json") as f:
    sidecar = json.load(f)
  assert sidecar["model"] == "vit" and sidecar["step"] == run.step == 2
  assert sidecar["input_shape"] == ["b", 16, 16, 1]
  assert sidecar["output_shape"] == ["b", 10]
  assert sidecar["dtype"] == "float32" and sidecar["input_layout"] == "NHWC"
  assert sidecar["class_names"] == [str(i) for i in range(10)]
  assert sidecar["preprocessing"]["image_size"] == [16, 16]
  assert sidecar["preprocessing"]["pixel_mean"] == [0.5]
  assert sidecar["preprocessing"]["pixel_std"] == [0.5]
  assert sidecar["jax_version"] == jax.__version__
  assert sidecar["platforms"] == ["cpu", "cuda"]
  assert sidecar["call"] == ("jax.export.deserialize(bytearray(open("
                             "'model.jaxexport', 'rb').read())).call(images)")


def test_the_file_alone_runs_in_a_fresh_process(workdir, tmp_path):
  """The sidecar's call, verbatim, in a process that imports jax only: the
  variables are in the file (its one input is the images)."""
  out = tmp_path / "model.jaxexport"
  assert cli.main(["export", workdir, "--out", str(out)]) == 0
  call = json.loads((tmp_path / "model.jaxexport.json").read_text())["call"]
  np.save(tmp_path / "images.npy", _images(4, seed=7))
  script = (
      "import sys, jax, numpy as np\n"
      "images = np.load('images.npy')\n"
      f"logits = {call}\n"
      "np.save('logits.npy', np.asarray(logits))\n"
      "assert not [m for m in sys.modules if m.startswith(('jaxattn', "
      "'flax'))]\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  run = inference.load_run(workdir, "best")
  np.testing.assert_allclose(np.load(tmp_path / "logits.npy"),
                             _flax_logits(run, _images(4, seed=7)), atol=ATOL)


def test_fixed_batch_from_a_checkpoint_directory(workdir, tmp_path, capsys):
  out = str(tmp_path / "b3.jaxexport")
  ckpt = os.path.join(workdir, checkpointing.LATEST_DIR, "2")
  assert cli.main(["export", ckpt, "--out", out, "--batch_size", "3"]) == 0
  assert "float32[3, 16, 16, 1]" in capsys.readouterr().out
  exported = _deserialize(out)
  assert exported.in_avals[0].shape == (3, 16, 16, 1)
  run = inference.load_run(workdir, 2)
  np.testing.assert_allclose(np.asarray(exported.call(_images(3))),
                             _flax_logits(run, _images(3)), atol=ATOL)
  with pytest.raises(ValueError, match="Shape mismatch"):
    exported.call(_images(5))
  with open(out + ".json") as f:
    sidecar = json.load(f)
  assert sidecar["input_shape"] == [3, 16, 16, 1] and sidecar["step"] == 2


def test_cli_refuses_to_overwrite_and_names_bad_input(workdir, tmp_path,
                                                      capsys):
  def fails(*argv, match):
    assert cli.main(["export", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err, err

  fresh = str(tmp_path / "x.jaxexport")
  fails(str(tmp_path / "nowhere"), "--out", fresh,
        match="nowhere is not a directory. Pass a training workdir")
  fails(str(tmp_path), "--out", fresh,
        match="has no config.json: it is not a jaxattn workdir")
  fails(workdir, "--out", fresh, "--step", "7",
        match="No checkpoint at step 7")
  fails(workdir, "--out", fresh, "--batch_size", "-1",
        match="--batch_size=-1: give 0 (any batch size")
  fails(workdir, "--out", str(tmp_path / "missing" / "x.jaxexport"),
        match="does not exist")
  fails(workdir, "--out", str(tmp_path), match="is a directory")
  assert not os.path.exists(fresh)

  out = tmp_path / "model.jaxexport"
  out.write_bytes(b"precious")
  fails(workdir, "--out", str(out), match="already exists. Pass --overwrite")
  assert out.read_bytes() == b"precious"
  only_sidecar = tmp_path / "other.jaxexport"
  (tmp_path / "other.jaxexport.json").write_text("{}")
  fails(workdir, "--out", str(only_sidecar),
        match="other.jaxexport.json (the description written beside --out) "
              "already exists")
  assert not only_sidecar.exists()
  assert cli.main(["export", workdir, "--out", str(out), "--overwrite"]) == 0
  assert "Wrote" in capsys.readouterr().out
  assert _deserialize(out).in_avals[0].shape[1:] == (16, 16, 1)

  # A model fed cached backbone outputs, not images: refused before any
  # checkpoint is read (its workdir needs only a config).
  head = tmp_path / "head_run"
  head.mkdir()
  config = checkpointing.load_config(workdir)
  config.model = {"name": "hybrid_head"}
  checkpointing.save_config(str(head), config)
  fails(str(head), "--out", fresh,
        match="trained 'hybrid_head', which classifies features")
  assert not os.path.exists(fresh)
