"""CAM, Grad-CAM and attention maps: what they compute, and that they localise."""

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from PIL import Image

from jaxattn import configlib, explain, plots
from jaxattn.inference import InputError, Run
from jaxattn.models import create_model

# One pytest-xdist worker runs the whole module: its tests share `region_run`.
pytestmark = pytest.mark.xdist_group("explain")


def _run(model, images, *, name, **config_fields) -> Run:
  """A Run around a freshly initialised model (no workdir needed)."""
  config = configlib.base_config()
  config.model = ml_collections.ConfigDict({"name": name})
  config.image_size = images.shape[1:3]
  config.num_classes = 5
  with config.unlocked():
    config.num_channels = images.shape[-1]
    config.class_names = [f"c{i}" for i in range(5)]
  config.update(config_fields)
  return Run(model, _random_variables(model, images), config, step=0)


def _random_variables(model, images):
  """Random values in the model's variable shapes. The identities tested
  here hold for any parameters, and this skips compiling the model's init
  (seconds for a ResNet, even a tiny one)."""
  shapes = jax.eval_shape(functools.partial(model.init, train=False),
                          jax.random.key(0), images)
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    name = path[-1].key
    if name in ("var", "scale"):  # BatchNorm variance, norm scales.
      return np.ones(leaf.shape, leaf.dtype)
    std = (1 / np.sqrt(np.prod(leaf.shape[:-1])) if name == "kernel"
           else 0.1)
    return (rng.normal(size=leaf.shape) * std).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _intermediates(model, variables, images):
  """path -> output of every module, through Flax's own
  capture_intermediates (not the interceptor under test)."""
  _, state = jax.jit(functools.partial(
      model.apply, train=False, capture_intermediates=True,
      mutable=["intermediates"]))(variables, images)
  flat = flax.traverse_util.flatten_dict(state["intermediates"], sep="/")
  return {k.removesuffix("/__call__"): np.asarray(v[0])
          for k, v in flat.items()}


# ----------------------------------------------------------------------------
# Grad-CAM finds the region that decides the class.
# ----------------------------------------------------------------------------
class _TinyCNN(nn.Module):
  """Two 3x3 convs, global average pool, linear head."""

  @nn.compact
  def __call__(self, x, *, train=False):
    del train
    x = nn.relu(nn.Conv(8, (3, 3), name="conv_0")(x))
    x = nn.relu(nn.Conv(16, (3, 3), name="conv_1")(x))
    return nn.Dense(2, name="head")(x.mean(axis=(1, 2)))


def _region_images(rng, n):
  """16x16 noise; class 1 has a bright 4x4 square inside the top-left
  quadrant (rows and columns 0-7), class 0 has none."""
  images = rng.normal(0.0, 0.3, (n, 16, 16, 1)).astype(np.float32)
  labels = rng.integers(0, 2, n)
  for image, label in zip(images, labels):
    if label:
      top, left = rng.integers(0, 5, 2)
      image[top:top + 4, left:left + 4] += 2.0
  return images, labels


@pytest.fixture(scope="module")
def region_run():
  rng = np.random.default_rng(0)
  model = _TinyCNN()
  params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))["params"]
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state, images, labels):
    def loss_fn(p):
      logits = model.apply({"params": p}, images)
      return optax.softmax_cross_entropy_with_integer_labels(logits,
                                                             labels).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  opt_state = tx.init(params)
  for _ in range(200):
    params, opt_state = step(params, opt_state, *_region_images(rng, 32))
  images, labels = _region_images(rng, 64)
  run = _run(model, images, name="tiny_cnn")
  return Run(model, {"params": params}, run.config, 0), images, labels


def test_grad_cam_puts_its_mass_on_the_deciding_region(region_run):
  run, images, labels = region_run
  logits = run.model.apply(run.variables, images)
  assert (logits.argmax(-1) == labels).mean() > 0.95  # It learned the task.
  positives = images[labels == 1]
  maps = explain.grad_cam(run, positives, np.ones(len(positives), np.int32),
                          explain.resolve_layer(run, "conv_1", explain.module_outputs(
                              run, positives)))
  assert maps.shape == (len(positives), 16, 16)
  in_region = maps[:, :8, :8].sum(axis=(1, 2)) / maps.sum(axis=(1, 2))
  # A quarter of the image; chance would put a quarter of the mass there.
  assert np.median(in_region) > 0.8, in_region
  assert in_region.min() > 0.5, in_region


def test_default_layer_of_an_unknown_model_is_its_last_map(region_run):
  run, images, _ = region_run
  outputs = explain.module_outputs(run, images[:1])
  assert list(outputs) == ["conv_0", "conv_1", "head"]
  assert explain.resolve_layer(run, "", outputs) == "conv_1"


# ----------------------------------------------------------------------------
# CAM is the class-weighted feature map of a pooled-linear head.
# ----------------------------------------------------------------------------
_TINY_RESNET = dict(num_classes=5, depth=50, stage_sizes=(1, 1, 1, 1),
                    width=8)


@pytest.mark.parametrize("name,kwargs,features,transform,chain", [
    ("slresnet", dict(_TINY_RESNET, head="linear"), "layer4_0", None, ["fc"]),
    # The seed's three Linears without activations: one linear map.
    ("slresnet", _TINY_RESNET, "layer4_0", None, ["fc_0", "fc_2", "fc_4"]),
    ("conv_vit", dict(num_classes=5, patch_size=2, hidden_dim=16, depth=1,
                      head_channels=8), "norm",
     lambda x: jax.nn.gelu(x, approximate=False), ["head"]),
])
def test_cam_is_the_class_weighted_feature_map(name, kwargs, features,
                                               transform, chain):
  # 64 px: a 2x2 layer4 map for the ResNets (8x8 tokens for the conv-ViT).
  size = 16 if name == "conv_vit" else 64
  images = np.random.default_rng(1).normal(size=(3, size, size, 3)).astype(
      np.float32)
  model = create_model(name, **kwargs)
  run = _run(model, images, name=name)
  params = run.variables["params"]
  weight = np.asarray(params[chain[0]]["kernel"], np.float64)
  bias = np.asarray(params[chain[0]]["bias"], np.float64)
  for layer in chain[1:]:
    kernel = np.asarray(params[layer]["kernel"], np.float64)
    weight, bias = weight @ kernel, bias @ kernel + params[layer]["bias"]
  f = _intermediates(model, run.variables, images)[features]
  f = np.asarray(transform(f)) if transform else f
  classes = np.array([0, 3, 4])

  cam = explain.class_activation_map(run, images, classes)

  assert cam.shape == (3, *f.shape[1:3]) and cam[0].size > 1
  expected = np.einsum("nhwk,kn->nhw", f, weight[:, classes])
  np.testing.assert_allclose(cam, expected, rtol=1e-4,
                             atol=1e-4 * np.abs(expected).max())
  # Averaged over positions, plus the bias, a CAM is the class's logit.
  logits = np.asarray(jax.jit(functools.partial(model.apply, train=False))(
      run.variables, images))
  np.testing.assert_allclose(cam.mean(axis=(1, 2)) + bias[classes],
                             logits[np.arange(3), classes], rtol=1e-4,
                             atol=1e-4 * np.abs(logits).max())


def test_grad_cam_of_a_pooled_linear_head_is_the_rectified_cam():
  images = np.random.default_rng(2).normal(size=(2, 64, 64, 3)).astype(
      np.float32)
  run = _run(create_model("slresnet", **dict(_TINY_RESNET, head="linear")),
             images, name="slresnet")
  classes = np.array([1, 2])
  cam = explain.class_activation_map(run, images, classes)
  grad_cam = explain.grad_cam(run, images, classes, "layer4_0")
  # d logit / d f(x, y) = w / (h * w) at every position.
  np.testing.assert_allclose(grad_cam * cam[0].size, np.maximum(cam, 0),
                             rtol=1e-4, atol=1e-5 * np.abs(cam).max())


# ----------------------------------------------------------------------------
# Attention maps: recomputed from q and k, checked against the modules.
# ----------------------------------------------------------------------------
def test_vit_attention_matches_the_module_and_rolls_out():
  images = np.random.default_rng(3).normal(size=(2, 16, 16, 1)).astype(
      np.float32)
  model = create_model("vit", num_classes=5, patch_size=4, hidden_dim=16,
                       depth=2, num_heads=2, mlp_dim=16)
  run = _run(model, images, name="vit")
  weights = explain.attention_weights(run, images)
  assert [w.shape for w in weights] == [(2, 2, 17, 17)] * 2
  params = run.variables["params"]
  outputs = _intermediates(model, run.variables, images)
  for i, attention in enumerate(weights):
    prefix = f"transformer_encoder_{i}/self_attention"
    value = outputs[f"{prefix}/value"]
    mixed = np.einsum("nhqk,nkhd->nqhd", attention,
                      value.reshape(2, 17, 2, 8)).reshape(2, 17, 16)
    out = params[f"transformer_encoder_{i}"]["self_attention"]["out"]
    np.testing.assert_allclose(
        mixed @ out["kernel"] + out["bias"],
        outputs[prefix], atol=1e-5)
  rollout = explain.attention_rollout(weights)
  np.testing.assert_allclose(rollout.sum(-1), 1.0, rtol=1e-5)
  maps, per_head = explain.attention_maps(run, images)
  assert maps.shape == (2, 4, 4) and per_head.shape == (2, 2, 4, 4)
  np.testing.assert_allclose(per_head, weights[-1][:, :, 0, 1:].reshape(
      2, 2, 4, 4))


def test_hybrid_backbone_attention_and_grad_cam_through_the_frozen_backbone():
  images = np.random.default_rng(4).normal(size=(1, 16, 16, 3)).astype(
      np.float32)
  model = create_model("hybrid", num_classes=5, patch_size=8, hidden_dim=16,
                       depth=1, num_heads=2, mlp_dim=16)
  run = _run(model, images, name="hybrid", metric_output="average",
             model_outputs="probabilities",
             loss_weights={"model0": 1.0, "vit": 1.0})
  [attention] = explain.attention_weights(run, images)
  prefix = "backbone/Transformer/encoderblock_0/MultiHeadDotProductAttention_1"
  outputs = _intermediates(model, run.variables, images)
  value = outputs[f"{prefix}/value"]
  out = run.variables["params"]
  for name in prefix.split("/"):
    out = out[name]
  mixed = np.einsum("nhqk,nkhd->nqhd", attention, value)
  np.testing.assert_allclose(
      np.einsum("nqhd,hde->nqe", mixed, out["out"]["kernel"]) +
      out["out"]["bias"], outputs[prefix], atol=1e-5)
  # The backbone's stop_gradient (it is frozen) must not zero the map.
  layer = explain.resolve_layer(run, "", explain.module_outputs(run, images))
  assert layer == "backbone/Transformer/encoderblock_0/LayerNorm_0"
  assert explain.grad_cam(run, images, np.array([2]), layer).max() > 0


def test_methods_that_do_not_apply_say_what_does():
  images = np.zeros((1, 16, 16, 3), np.float32)
  run = _run(create_model("conv_vit", num_classes=5, patch_size=2,
                          hidden_dim=16, depth=1, head_channels=8), images,
             name="conv_vit")
  assert explain.supported_methods(run) == ["cam", "gradcam"]
  with pytest.raises(InputError, match="mixes channels.*--method=cam or "
                     "--method=gradcam"):
    explain.check_method(run, "attention")
  outputs = explain.module_outputs(run, images)
  with pytest.raises(InputError, match="not a module.*layers_0/attn"):
    explain.resolve_layer(run, "layers_9", outputs)
  with pytest.raises(InputError, match=r"outputs shape \(1, 5\), not a spatial"):
    explain.resolve_layer(run, "head", outputs)
  assert explain.resolve_layer(run, "layers_0.attn", outputs) == "layers_0/attn"


# ----------------------------------------------------------------------------
# The pictures.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("channels,heads", [(1, 0), (3, 4), (1, 12)])
def test_overlays_are_pngs_of_the_expected_size(tmp_path, channels, heads):
  rng = np.random.default_rng(5)
  fig = plots.explanation_figure(
      rng.random((16, 16, channels)), rng.random((16, 16)), title="t\nu",
      map_title="Grad-CAM",
      head_maps=rng.random((heads, 16, 16)) if heads else None)
  path = plots.save_png(fig, str(tmp_path / "sub" / "x.png"))
  with Image.open(path) as image:
    assert image.format == "PNG"
    # Panels of 2.4 in at 100 dpi: 3 (or up to 6 head maps) across, one row
    # plus a row per 6 heads down, and 0.85 in of titles.
    columns = max(3, min(heads, 6))
    rows = 1 + -(-heads // 6)
    assert image.size == (240 * columns, 240 * rows + 85)
    assert image.size == plots.explanation_size(heads)
