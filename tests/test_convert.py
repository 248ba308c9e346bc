"""Tests for jaxattn.convert: Flax <-> PyTorch checkpoints.

* Every architecture (conv_vit, vit, SE-CNN, SA-CNN, SL-ResNet, GSoP-ResNet,
  hybrid) trains two steps with its config's smoke variant, is converted by
  ``to_torch``, loads with ``load_state_dict(strict=True)`` into its PyTorch
  definition, and gives the Flax model's outputs (fp32, eval mode); the
  conversion round-trips to identical variables, in memory and through files.
* Full-size SL-ResNet-50/101/152 (fresh variables, 32x32, batch 1) too.
* torchvision-layout ResNet-50 weights import into the SL-ResNet backbone
  (SLayer and head stay at init) with PyTorch's features; timm and vit_jax /
  big_vision ViTs import into the hybrid's backbone, resized.
* Bad input: truncated or foreign files, wrong configs, existing outputs,
  unknown layouts, bad checkpoint paths all fail with what to do.
"""

import functools
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
from flax import traverse_util  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import jaxattn  # noqa: E402
from jaxattn import convert, experiment, pretrained, train, weights  # noqa: E402
from jaxattn.convert import __main__ as cli  # noqa: E402
from jaxattn.models import create_model  # noqa: E402
from jaxattn.torch_models import create_torch_model  # noqa: E402
from tests.conftest import REPO, once_per_process  # noqa: E402

# One pytest-xdist worker runs the whole module: its tests share the trained
# runs of the `trained` fixture.
pytestmark = pytest.mark.xdist_group("convert")

# Architecture -> its smoke config (configs/NAME.py:smoke).
_RUNS = {
    "conv_vit": "cifar10_convvit",
    "vit": "mnist_vit",
    "se_cnn": "mnist_se_cnn",
    "sa_cnn": "mnist_sa_cnn",
    "slresnet": "cifar10_slresnet50",
    "gsop_resnet": "cifar100_gsop_resnet50",
    "hybrid": "cifar10_hybrid",
}
TOL = 1e-4


def _config(name, arg="smoke"):
  return convert.load_config_file(f"{REPO}/configs/{name}.py:{arg}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """architecture -> workdir of its smoke config trained for two steps."""
  runs = once_per_process("convert/trained", dict)

  def get(arch):
    if arch not in runs:
      config = _config(_RUNS[arch])
      config.num_steps = 2
      config.val_split = config.test_split = ""  # Only the two steps.
      workdir = tmp_path_factory.mktemp(arch)
      train.train_and_evaluate(config, str(workdir))
      runs[arch] = str(workdir)
    return runs[arch]

  return get


def _inputs(config, batch=2, seed=0):
  """NHWC images preprocessed as in evaluation."""
  shape = (batch, *config.image_size, config.num_channels)
  u = np.random.default_rng(seed).uniform(size=shape).astype(np.float32)
  mean = np.asarray(config.pixel_mean, np.float32)
  std = np.asarray(config.pixel_std, np.float32)
  return (u - mean) / std


def _torch_forward(model, x_nhwc):
  with torch.no_grad():
    out = model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy()))
  if isinstance(out, dict):
    return {k: v.numpy() for k, v in out.items()}
  return {"logits": out.numpy()}


def _flax_forward(model, variables, x):
  with jax.default_matmul_precision("float32"):
    out = model.apply(variables, x, train=False)
  if isinstance(out, dict):
    return {k: np.asarray(v) for k, v in out.items()}
  return {"logits": np.asarray(out)}


def _max_diff(want, got):
  assert set(want) == set(got)
  return max(float(np.abs(want[k] - got[k]).max()) for k in want)


def _flat_equal(a, b):
  a, b = convert.flatten_variables(a), convert.flatten_variables(b)
  assert set(a) == set(b)
  for k in a:
    assert np.asarray(a[k]).dtype == np.asarray(b[k]).dtype, k
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]),
                                  err_msg="/".join(k))


def _variables_dir(path):
  with np.load(os.path.join(path, pretrained.VARIABLES_FILE)) as npz:
    flat = {tuple(k.split("/")): npz[k] for k in npz.files}
  with open(os.path.join(path, pretrained.CONVERSION_FILE)) as f:
    return traverse_util.unflatten_dict(flat), json.load(f)


# --------------------------------------------------------------------------
# 1. + 2. Every architecture: trained, converted, loaded strictly, same
# outputs; and back to identical variables.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(_RUNS))
def test_trained_run_converts_to_torch_with_the_same_outputs(
    arch, trained, tmp_path, record_property):
  workdir = trained(arch)
  out = str(tmp_path / "model.safetensors")
  summary = convert.to_torch(workdir, out)
  assert summary["model"] == arch and summary["step"] == 2
  assert not summary["left_out"]

  _, variables, config = jaxattn.load(workdir)
  with config.unlocked():
    config.compute_dtype = "float32"  # Compare in fp32, whatever the recipe.
  flax_model = experiment.build_model(config)
  model = convert.torch_model_for(workdir).eval()
  assert convert.check_numerics(model, convert.get_layout(arch)) == []
  state_dict = load_file(out)
  model.load_state_dict(state_dict, strict=True)
  # BatchNorm counters are written as int64 0, as a fresh PyTorch model has.
  counters = [v for k, v in state_dict.items() if "num_batches_tracked" in k]
  assert all(v.dtype == torch.int64 and v.item() == 0 for v in counters)
  assert bool(counters) == ("batch_stats" in variables)

  x = _inputs(config)
  want = _flax_forward(flax_model, variables, x)
  got = _torch_forward(model, x)
  diff = _max_diff(want, got)
  record_property("max_abs_diff", diff)
  print(f"\n{arch}: max |delta output| = {diff:.3g}")
  assert diff <= TOL, diff

  # The file names its model, so it can be rebuilt without the workdir.
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  with safe_open(out, "np") as f:
    meta = f.metadata()
  spec = json.loads(meta["jaxattn.torch_model"])
  assert (spec["name"], meta["jaxattn.layout"]) == (
      arch, convert.get_layout(arch).name)
  assert create_torch_model(spec["name"], **spec["kwargs"]).load_state_dict(
      state_dict, strict=True)


@pytest.mark.parametrize("arch", sorted(_RUNS))
def test_round_trip_returns_identical_variables(arch, trained, tmp_path):
  workdir = trained(arch)
  _, variables, config = jaxattn.load(workdir)
  # In memory.
  state_dict, plan = convert.state_dict_from_variables(arch, variables)
  flat, _, _ = convert.variables_from_state_dict(state_dict, plan.flax_shapes,
                                                 arch)
  _flat_equal(variables, traverse_util.unflatten_dict(flat))
  # Through a .pt file and from-torch's directory, then init_from.
  pt = str(tmp_path / "model.pt")
  convert.to_torch(workdir, pt)
  record = convert.from_torch(pt, config, str(tmp_path / "back"))
  assert record["kept_at_init"] == [] and record["layout"] == plan.layout.name
  back, _ = _variables_dir(tmp_path / "back")
  _flat_equal(variables, back)
  with config.unlocked():
    config.init_from = str(tmp_path / "back")
  zeros = jax.tree.map(np.zeros_like, variables)
  params, stats = pretrained.load(config, zeros["params"],
                                  zeros.get("batch_stats", {}))
  _flat_equal(variables, {"params": params, "batch_stats": stats})


def test_training_starts_from_converted_params_and_batch_stats(trained,
                                                               tmp_path):
  """train_and_evaluate loads both collections: two runs from files that
  differ only in their BatchNorm statistics, trained with lr=0, keep the
  same params and differ by exactly 0.9 x the statistics' difference."""
  workdir = trained("se_cnn")
  _, variables, config = jaxattn.load(workdir)
  pt = str(tmp_path / "se.safetensors")
  convert.to_torch(workdir, pt)
  shifted = {k: (v + 1.0 if k.endswith(("running_mean", "running_var"))
                 else v) for k, v in load_file(pt).items()}
  from safetensors.torch import save_file as save_torch  # pylint: disable=g-import-not-at-top
  save_torch(shifted, str(tmp_path / "shifted.safetensors"))
  results = {}
  for name in ("se", "shifted"):
    convert.from_torch(str(tmp_path / f"{name}.safetensors"), config,
                       str(tmp_path / f"{name}_dir"))
    run = _config("mnist_se_cnn")
    run.num_steps, run.val_split, run.test_split = 1, "", ""
    run.schedule.lr = 0.0
    run.init_from = str(tmp_path / f"{name}_dir")
    train.train_and_evaluate(run, str(tmp_path / f"{name}_run"))
    results[name] = jaxattn.load(str(tmp_path / f"{name}_run"))[1]
  _flat_equal(variables["params"], results["se"]["params"])
  _flat_equal(results["shifted"]["params"], results["se"]["params"])
  for a, b in zip(jax.tree.leaves(results["shifted"]["batch_stats"]),
                  jax.tree.leaves(results["se"]["batch_stats"])):
    np.testing.assert_allclose(np.asarray(a) - np.asarray(b), 0.9, atol=1e-4)


def test_data_parallel_prefix_and_numerics_traps(trained):
  """Seed 004's DataParallel checkpoints carry 'module.'; a PyTorch module
  with PyTorch-default-but-wrong numerics is named, layer by layer."""
  workdir = trained("conv_vit")
  _, variables, _ = jaxattn.load(workdir)
  state_dict, plan = convert.state_dict_from_variables("conv_vit", variables)
  flat, _, report = convert.variables_from_state_dict(
      {f"module.{k}": v for k, v in state_dict.items()}, plan.flax_shapes,
      "conv_vit")
  assert report["stripped_prefix"] == "module."
  _flat_equal(variables, traverse_util.unflatten_dict(flat))
  model = convert.torch_model_for(workdir)
  model.norm.eps = 1e-6
  model.transformer.layers[0][1].fn.net[1].approximate = "tanh"
  assert convert.check_numerics(model, convert.get_layout("conv_vit")) == [
      "transformer.layers.0.1.fn.net.1: GELU(approximate='tanh'), the Flax "
      "model uses approximate='none'",
      "norm: LayerNorm eps 1e-06, the Flax model uses 1e-05"]


# --------------------------------------------------------------------------
# Full-size SL-ResNets: fresh variables, converted, same logits.
# --------------------------------------------------------------------------


def _fresh_variables(model, x, seed=0):
  """Random variables of the model's shapes without an init compile: kernels
  at PyTorch's init scale, BatchNorm statistics away from 0/1."""
  shapes = jax.eval_shape(functools.partial(model.init, train=False),
                          jax.random.key(0), x)
  rng = np.random.default_rng(seed)

  def fill(path, s):
    leaf = path[-1].key
    if leaf == "kernel":
      bound = 1 / np.sqrt(np.prod(s.shape[:-1]))
      return rng.uniform(-bound, bound, s.shape).astype(np.float32)
    if leaf == "var":
      return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
    if leaf == "scale":
      return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
    return rng.normal(0, 0.1, s.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize("depth", [50, 101, 152])
def test_full_size_slresnet_logits_match(depth, record_property):
  x = np.random.default_rng(1).normal(size=(1, 32, 32, 3)).astype(np.float32)
  flax_model = create_model("slresnet", depth=depth)
  variables = _fresh_variables(flax_model, x, seed=depth)
  want = _flax_forward(flax_model, variables, x)  # Eager: no compile.
  state_dict, _ = convert.state_dict_from_variables("slresnet", variables)
  with torch.device("meta"):
    model = create_torch_model("slresnet", depth=depth)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()},
                        strict=True, assign=True)
  got = _torch_forward(model.eval(), x)
  diff = _max_diff(want, got)
  scale = float(np.abs(want["logits"]).max())
  record_property("max_abs_diff", diff)
  print(f"\nslresnet{depth}: max |delta logit| = {diff:.3g} "
        f"(max |logit| {scale:.3g})")
  assert diff <= TOL * max(1.0, scale), (diff, scale)


# --------------------------------------------------------------------------
# 3. torchvision ResNet-50 -> the SL-ResNet backbone.
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torchvision_r50(tmp_path_factory):
  """A random torchvision-layout ResNet-50 (exactly torchvision's 320 keys),
  BatchNorm statistics randomised, saved with torch.save.

  The last BatchNorm of each residual branch gets small scales, as trained
  ResNets have (and torchvision's zero_init_residual sets to 0): with scales
  near 1 everywhere, 16 residual additions blow features up to ~1e3, where
  float32 cannot resolve 1e-4.
  """
  torch.manual_seed(0)
  model = create_torch_model("slresnet", attention="none", head="linear")
  with torch.no_grad():
    for name, m in model.named_modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
        last = name.endswith("bn3") or name.endswith("downsample.1")
        m.weight.uniform_(0.05, 0.2) if last else m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)
  path = tmp_path_factory.mktemp("tv") / "resnet50.pth"
  torch.save(model.state_dict(), path)
  return str(path), model.eval()


def test_torchvision_resnet50_imports_into_the_sl_backbone(torchvision_r50,
                                                           tmp_path, capsys):
  path, tv_model = torchvision_r50
  out = tmp_path / "r50"
  config_spec = f"{REPO}/configs/cifar10_slresnet50.py"
  # The default (seed 001) layout wants sl.fc and the fc.0/2/4 head.
  assert cli.main(["from-torch", path, f"--config={config_spec}",
                   "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert "Missing from the file (22)" in err and "layer1.0.sl.fc.weight" in err
  assert "Unexpected in the file (2)" in err and "fc.weight" in err
  assert "pass --layout torchvision" in err
  assert cli.main(["from-torch", path, f"--config={config_spec}",
                   "--out", str(out), "--layout", "torchvision"]) == 0
  assert "Kept at their initialisation: 22" in capsys.readouterr().out
  imported, record = _variables_dir(out)
  assert record["layout"] == "torchvision"
  assert sorted(record["kept_at_init"]) == sorted(
      [f"params/layer{s}_{b}/sl/fc/kernel"
       for s, n in enumerate((3, 4, 6, 3), 1) for b in range(n)] +
      [f"params/fc_{i}/{p}" for i in (0, 2, 4) for p in ("bias", "kernel")])
  assert {"fc.weight", "fc.bias"} <= set(record["ignored_source_keys"])

  # Features: the imported backbone in a plain Flax ResNet-50 (no SLayer)
  # equals torchvision's layer4 output.
  x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  plain = create_model("slresnet", attention="none", head="linear")
  sd = tv_model.state_dict()
  variables = {
      "params": {**imported["params"], "fc": {
          "kernel": sd["fc.weight"].numpy().T, "bias": sd["fc.bias"].numpy()}},
      "batch_stats": imported["batch_stats"]}
  with jax.default_matmul_precision("float32"):
    logits, inter = plain.apply(variables, x, capture_intermediates=True)
  flax_features = np.asarray(inter["intermediates"]["layer4_2"]["__call__"][0])
  captured = {}

  def hook(module, inputs, output):
    del module, inputs
    captured["layer4"] = output.detach().numpy().copy()

  handle = tv_model.layer4.register_forward_hook(hook)
  torch_logits = _torch_forward(tv_model, x)["logits"]
  handle.remove()
  torch_features = captured["layer4"].transpose(0, 2, 3, 1)
  diff = float(np.abs(flax_features - torch_features).max())
  scale = float(np.abs(torch_features).max())
  print(f"\ntorchvision R50 import: max |delta feature| = {diff:.3g} "
        f"(max |feature| {scale:.3g})")
  assert 0.1 < scale < 100.0  # Realistic magnitudes: 1e-4 means something.
  assert diff <= TOL
  np.testing.assert_allclose(np.asarray(logits), torch_logits, rtol=0,
                             atol=TOL)

  # init_from: backbone from the file, sl/fc and the head stay at init.
  config = _config("cifar10_slresnet50", "")
  config.init_from = str(out)
  config, _, shapes = convert.model_shapes(config)
  init = traverse_util.unflatten_dict(
      {k: np.full(s, 7.0, np.float32) for k, s in shapes.items()})
  params, stats = pretrained.load(config, init["params"], init["batch_stats"])
  np.testing.assert_array_equal(params["layer3_5"]["conv2"]["kernel"],
                                imported["params"]["layer3_5"]["conv2"]["kernel"])
  np.testing.assert_array_equal(stats["layer1_0"]["downsample_1"]["var"],
                                sd["layer1.0.downsample.1.running_var"].numpy())
  assert (params["layer2_1"]["sl"]["fc"]["kernel"] == 7.0).all()
  assert (params["fc_4"]["kernel"] == 7.0).all()


def test_partial_variables_need_conversion_json(torchvision_r50, tmp_path):
  path, _ = torchvision_r50
  out = tmp_path / "r50"
  config = _config("cifar10_slresnet50", "")
  convert.from_torch(path, config, str(out), layout="torchvision")
  os.remove(out / pretrained.CONVERSION_FILE)
  config.init_from = str(out)
  config, _, shapes = convert.model_shapes(config)
  init = traverse_util.unflatten_dict(
      {k: np.zeros(s, np.float32) for k, s in shapes.items()})
  with pytest.raises(ValueError, match=r"(?s)Missing from the file \(22\).*"
                     r"params/fc_0/bias.*No conversion.json"):
    pretrained.load(config, init["params"], init["batch_stats"])


@pytest.mark.parametrize("damage", ["truncated_pt", "truncated_safetensors",
                                    "text", "pickled_module", "vit_weights"])
def test_bad_torch_files_are_named(damage, torchvision_r50, tmp_path):
  path, tv_model = torchvision_r50
  config = _config("cifar10_slresnet50", "")
  if damage == "truncated_pt":
    data = open(path, "rb").read()
    bad, match = tmp_path / "r50.pth", "not a readable PyTorch checkpoint.*truncated"
    bad.write_bytes(data[:len(data) // 2])
  elif damage == "truncated_safetensors":
    full = tmp_path / "full.safetensors"
    save_file({k: v.numpy() for k, v in tv_model.state_dict().items()}, full)
    data = full.read_bytes()
    bad, match = tmp_path / "r50.safetensors", "not a readable .safetensors.*truncated"
    bad.write_bytes(data[:len(data) - 1000])
  elif damage == "text":
    bad, match = tmp_path / "r50.pth", "not a readable PyTorch checkpoint"
    bad.write_text("<html>404 Not Found</html>")
  elif damage == "pickled_module":
    bad, match = tmp_path / "r50.pth", "not a plain state_dict.*state_dict\\(\\)"
    torch.save(torch.nn.Linear(2, 2), bad)
  else:  # A real state_dict of another model.
    bad = tmp_path / "vit.safetensors"
    save_file({k: v.numpy() for k, v in create_torch_model(
        "vit", depth=1, hidden_dim=16, num_heads=2, mlp_dim=8,
        image_size=8).state_dict().items()}, bad)
    match = (r"(?s)Missing from the file \(265\).*conv1.weight.*"
             r"Unexpected in the file \(16\).*output_layer.weight")
  with pytest.raises(convert.ConversionError, match=f"(?s){match}"):
    convert.from_torch(str(bad), config, str(tmp_path / "out"),
                       layout="torchvision")
  assert not os.path.exists(tmp_path / "out" / pretrained.VARIABLES_FILE)


# --------------------------------------------------------------------------
# The hybrid's backbone: timm and vit_jax / big_vision layouts.
# --------------------------------------------------------------------------


def _tiny_vit(image_size):
  from jaxattn.models.hybrid.pytorch import VisionTransformer  # pylint: disable=g-import-not-at-top
  torch.manual_seed(image_size)
  return VisionTransformer(patch_size=8, hidden_dim=16, depth=1, num_heads=2,
                           mlp_dim=32, image_size=image_size).eval()


def test_timm_export_and_import_with_posemb_resize(trained, tmp_path, capsys):
  workdir = trained("hybrid")
  flax_model, variables, config = jaxattn.load(workdir)
  # Export: timm's top-level keys, the backbone alone; same logits.
  out = str(tmp_path / "timm.safetensors")
  assert cli.main(["to-torch", workdir, "--out", out, "--layout", "timm"]) == 0
  assert "Left out by the timm layout" in capsys.readouterr().out
  vit = _tiny_vit(32)
  vit.load_state_dict(load_file(out), strict=True)
  x = _inputs(config)
  with jax.default_matmul_precision("float32"):
    want = flax_model.apply(variables, x, method="backbone_logits")
  got = _torch_forward(vit, x)["logits"]
  np.testing.assert_allclose(got, np.asarray(want), atol=TOL, rtol=TOL)

  # Import a 48 px timm ViT into the 32 px hybrid: the default layout says
  # which one fits; the positional embedding is resized as vit_jax does.
  src = tmp_path / "vit48.safetensors"
  sd48 = {k: v.numpy() for k, v in _tiny_vit(48).state_dict().items()}
  save_file(sd48, src)
  spec = f"{REPO}/configs/cifar10_hybrid.py:smoke"
  assert cli.main(["from-torch", str(src), f"--config={spec}",
                   "--out", str(tmp_path / "h")]) == 2
  assert "pass --layout timm" in capsys.readouterr().err
  assert cli.main(["from-torch", str(src), f"--config={spec}", "--out",
                   str(tmp_path / "h"), "--layout", "timm"]) == 0
  assert "Resized pos_embed: (1, 37, 16) -> (1, 17, 16)" in (
      capsys.readouterr().out)
  imported, record = _variables_dir(tmp_path / "h")
  assert all(k.split("/")[1] == "fusion" for k in record["kept_at_init"])
  assert "params/fusion/dense2w/kernel" in record["kept_at_init"]
  np.testing.assert_allclose(
      imported["params"]["backbone"]["Transformer"]["posembed_input"][
          "pos_embedding"],
      weights.resize_posemb(sd48["pos_embed"], 17))
  np.testing.assert_array_equal(
      imported["params"]["backbone"]["Transformer"]["encoderblock_0"][
          "MlpBlock_3"]["Dense_0"]["kernel"], sd48["blocks.0.mlp.fc1.weight"].T)


def test_vit_jax_and_big_vision_npz_into_the_hybrid(trained, tmp_path):
  workdir = trained("hybrid")
  _, variables, config = jaxattn.load(workdir)
  # to-torch --layout vit_jax writes the vit_jax .npz; load_vit_npz reads it.
  npz = str(tmp_path / "vit_jax.npz")
  convert.to_torch(workdir, npz, layout="vit_jax")
  from jaxattn.models import hybrid  # pylint: disable=g-import-not-at-top
  _flat_equal(variables["params"]["backbone"],
              hybrid.load_vit_npz(npz, variables["params"]["backbone"]))
  # from-torch of an .npz defaults to the vit_jax layout.
  record = convert.from_torch(npz, config, str(tmp_path / "a"))
  assert record["layout"] == "vit_jax"
  a, _ = _variables_dir(tmp_path / "a")
  _flat_equal(variables["params"]["backbone"], a["params"]["backbone"])
  # big_vision's own names (posemb added before the class token, no
  # Transformer/posembed_input, LayerNorm_1, ...) give the same backbone
  # when the class token's position row is zero.
  flat = dict(np.load(npz))
  pos = flat.pop("Transformer/posembed_input/pos_embedding")
  pos[:, 0] = 0.0
  flat["pos_embedding"] = pos[:, 1:]
  renames = {"MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
             "LayerNorm_2": "LayerNorm_1", "MlpBlock_3": "MlpBlock_0"}
  bv = {}
  for k, v in flat.items():
    for old, new in renames.items():
      k = k.replace(f"/{old}/", f"/{new}/")
    bv[f"params/{k}"] = v
  np.savez(tmp_path / "bv.npz", **bv)
  convert.from_torch(str(tmp_path / "bv.npz"), config, str(tmp_path / "b"))
  b, _ = _variables_dir(tmp_path / "b")
  want = traverse_util.flatten_dict(a["params"]["backbone"])
  want[("Transformer", "posembed_input", "pos_embedding")][:, 0] = 0.0
  _flat_equal(traverse_util.unflatten_dict(want), b["params"]["backbone"])


# --------------------------------------------------------------------------
# The CLI: errors that say what to do.
# --------------------------------------------------------------------------


def test_cli_refuses_to_overwrite_and_names_bad_input(trained, tmp_path,
                                                      capsys):
  workdir = trained("vit")
  out = tmp_path / "vit.safetensors"
  out.write_bytes(b"precious")

  def fails(*argv, match):
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err
    assert match in err, err

  fails("to-torch", workdir, "--out", str(out),
        match="already exists. Pass --overwrite")
  assert out.read_bytes() == b"precious"
  fails("to-torch", workdir, "--out", str(tmp_path / "x.safetensors"),
        "--layout", "timm",
        match="Unknown layout 'timm' for model 'vit'. Valid layouts: "
              "seed002 (default)")
  fails("to-torch", str(tmp_path / "nowhere"), "--out",
        str(tmp_path / "x.safetensors"),
        match="is not a directory. Pass a training workdir")
  fails("to-torch", str(tmp_path), "--out", str(tmp_path / "x.safetensors"),
        match="has no config.json: it is not a jaxattn workdir")
  fails("to-torch", workdir, "--step", "7", "--out",
        str(tmp_path / "x.safetensors"),
        match="No checkpoint at step 7")
  fails("to-torch", workdir, "--out", str(tmp_path / "x.onnx"),
        match="unknown extension '.onnx'")
  assert cli.main(["to-torch", workdir, "--out", str(out), "--overwrite"]) == 0
  assert "Wrote" in capsys.readouterr().out
  assert len(load_file(out)) == 16

  # from-torch: a config whose model differs from the file's.
  fails("from-torch", str(out), f"--config={REPO}/configs/mnist_vit.py",
        "--out", str(tmp_path / "d"),
        match="Shape mismatches")
  fails("from-torch", str(out), f"--config={REPO}/configs/mnist_vit.py:smoke",
        "--config.num_classes=12", "--out", str(tmp_path / "d"),
        match="output_layer.weight: file (10, 32), model (12, 32)\n"
              "Hint: only the classifier's size differs")
  assert cli.main(["from-torch", str(out),
                   f"--config={REPO}/configs/mnist_vit.py:smoke",
                   "--out", str(tmp_path / "d")]) == 0
  capsys.readouterr()
  fails("from-torch", str(out), f"--config={REPO}/configs/mnist_vit.py:smoke",
        "--out", str(tmp_path / "d"),
        match="already holds variables.npz, conversion.json. Pass --overwrite")
  fails("from-torch", str(tmp_path / "missing.pt"),
        f"--config={REPO}/configs/mnist_vit.py:smoke", "--out",
        str(tmp_path / "e"), match="missing.pt does not exist")


def test_layouts_are_exact_inverses_of_each_other():
  """Every tensor rule: to_flax(to_torch(x)) == x, on odd shapes."""
  from jaxattn.convert import tensors  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  cases = {
      tensors.COPY: [(3, 5)], tensors.DENSE: [(3, 5)],
      tensors.CONV: [(3, 5, 2, 7), (4, 2, 6), (128, 1, 1, 512)],
      tensors.DENSE_AS_CONV1X1: [(3, 5)],
      tensors.TOKENS_LAST_TO_FIRST: [(1, 7, 5)],
      tensors.MAP_LAST_TO_FIRST: [(3, 4, 5)],
      tensors.QKV_KERNEL: [(6, 6)] * 3, tensors.QKV_BIAS: [(2, 3)] * 3,
      tensors.HEADS_TO_DENSE: [(2, 3, 6)],
  }
  for rule, shapes in cases.items():
    parts = [rng.normal(size=s) for s in shapes]
    t = rule.to_torch(parts)
    assert t.shape == rule.torch_shape(shapes), rule
    for a, b in zip(rule.to_flax(t, shapes), parts):
      np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(
      tensors.QKV_KERNEL.to_torch([np.eye(2), 2 * np.eye(2), 3 * np.eye(2)]),
      np.concatenate([np.eye(2), 2 * np.eye(2), 3 * np.eye(2)]))
