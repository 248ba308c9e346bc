"""Tests for jaxattn.models.resnet (seed 001's SL-ResNets, and GSoP-Net).

The numeric tests rebuild torchvision's ResNet forward in NumPy, float64,
channels-first, from a state_dict converted out of the Flax variables with the
rule in ``resnet``'s module docstring. Equality therefore checks the math,
the padding/stride conventions and that name/layout mapping together.
Large models are only shape-evaluated (``jax.eval_shape``); compute runs on
tiny variants (one block per stage, narrow ``width``).
"""

import functools
import math
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattn.models import create_model, resnet
from jaxattn.models.resnet import (BasicBlock, Bottleneck, GSoPResNet, ResNet,
                                   SLayer, SLResNet)

# One block per stage and width 8: every code path (stem, downsample at each
# stage, strides 1/2/2/2, head), compiled in seconds.
_TINY = dict(stage_sizes=(1, 1, 1, 1), width=8, num_classes=7)


def _param_count(model, image_shape=(1, 64, 64, 3), collection="params"):
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(image_shape)))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes[collection]))


@functools.partial(jax.jit, static_argnums=0)
def _init(model, x):
  return model.init(jax.random.key(0), x)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _jit_apply(model, variables, x, train):
  if train:
    return model.apply(variables, x, train=True, mutable=["batch_stats"],
                       rngs={"dropout": jax.random.key(1)})
  return model.apply(variables, x)


def _apply(model, variables, x, train=False):
  # Full float32 matmuls, so the 1e-4 comparisons hold on any backend.
  with jax.default_matmul_precision("float32"):
    return _jit_apply(model, variables, x, train)


# Non-square, with even sides at the stride-2 stem conv, max pool and layer2
# (40 -> 20 -> 10 -> 5), where Flax's "SAME" would pad (0, 1) and PyTorch pads
# (1, 1); a row/column mix-up also shows. One shape for all tiny-model tests
# shares their compiles.
_IMAGE_SHAPE = (2, 34, 40, 3)


def _images(shape=_IMAGE_SHAPE, seed=1):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _randomize_bn(variables, seed=0):
  """Non-trivial BN scale/bias/statistics, so eval-mode BN is really tested."""
  rng = np.random.default_rng(seed)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  for path, value in flat.items():
    leaf = path[-1]
    if path[0] == "batch_stats" and leaf == "mean":
      flat[path] = jnp.asarray(rng.normal(0, 0.5, value.shape), jnp.float32)
    elif path[0] == "batch_stats" and leaf == "var":
      flat[path] = jnp.asarray(rng.uniform(0.5, 2.0, value.shape), jnp.float32)
    elif path[0] == "params" and leaf == "scale":
      flat[path] = jnp.asarray(rng.uniform(0.5, 1.5, value.shape), jnp.float32)
    elif path[0] == "params" and leaf == "bias" and len(path) > 2 and "bn" in path[-2]:
      flat[path] = jnp.asarray(rng.normal(0, 0.2, value.shape), jnp.float32)
    elif path[0] == "params" and leaf == "bias" and path[-2] == "downsample_1":
      flat[path] = jnp.asarray(rng.normal(0, 0.2, value.shape), jnp.float32)
  return flax.traverse_util.unflatten_dict(flat)


# --------------------------------------------------------------------------
# The documented Flax -> torchvision mapping, and torchvision's math in NumPy.
# --------------------------------------------------------------------------

_LEAVES = {("params", "kernel"): "weight", ("params", "scale"): "weight",
           ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
           ("batch_stats", "var"): "running_var"}


def _torch_key(path):
  collection, *modules, leaf = path
  modules = [re.sub(r"_(\d+)$", r".\1", m) for m in modules]
  return ".".join(modules + [_LEAVES[collection, leaf]])


def _torch_layout(value):
  value = np.asarray(value, np.float64)
  if value.ndim == 4:  # conv kernel [kh,kw,I,O] -> weight [O,I,kh,kw]
    return value.transpose(3, 2, 0, 1)
  return value.T if value.ndim == 2 else value  # Dense kernel -> Linear weight


def _state_dict(variables):
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  return {_torch_key(p): _torch_layout(v) for p, v in flat.items()}


def _conv2d(x, w, stride=1, pad=0):
  """``F.conv2d`` on NCHW x with an OIHW weight, symmetric zero padding."""
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  _, _, kh, kw = w.shape
  ho = (x.shape[2] - kh) // stride + 1
  wo = (x.shape[3] - kw) // stride + 1
  out = 0.0
  for dy in range(kh):
    for dx in range(kw):
      patch = x[:, :, dy:dy + stride * (ho - 1) + 1:stride,
                dx:dx + stride * (wo - 1) + 1:stride]
      out = out + np.einsum("bchw,oc->bohw", patch, w[:, :, dy, dx])
  return out


def _max_pool_3x3_s2(x):
  """``F.max_pool2d(x, 3, 2, padding=1)``: implicit -inf padding."""
  x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  ho, wo = (x.shape[2] - 3) // 2 + 1, (x.shape[3] - 3) // 2 + 1
  windows = [x[:, :, dy:dy + 2 * (ho - 1) + 1:2, dx:dx + 2 * (wo - 1) + 1:2]
             for dy in range(3) for dx in range(3)]
  return np.max(windows, axis=0)


def _bn(sd, pre, x, eps=1e-5):
  """Eval-mode ``BatchNorm2d``."""
  c = lambda n: sd[f"{pre}.{n}"][None, :, None, None]
  return (x - c("running_mean")) / np.sqrt(c("running_var") + eps) * c("weight") + c("bias")


def _relu(x):
  return np.maximum(x, 0.0)


def _torch_block(sd, pre, x, kind, stride, attention="sl"):
  """torchvision's BasicBlock / Bottleneck (v1.5) with the seed's SLayer."""
  if kind == "bottleneck":
    out = _relu(_bn(sd, f"{pre}.bn1", _conv2d(x, sd[f"{pre}.conv1.weight"])))
    out = _relu(_bn(sd, f"{pre}.bn2",
                    _conv2d(out, sd[f"{pre}.conv2.weight"], stride, 1)))
    out = _bn(sd, f"{pre}.bn3", _conv2d(out, sd[f"{pre}.conv3.weight"]))
  else:
    out = _relu(_bn(sd, f"{pre}.bn1",
                    _conv2d(x, sd[f"{pre}.conv1.weight"], stride, 1)))
    out = _bn(sd, f"{pre}.bn2", _conv2d(out, sd[f"{pre}.conv2.weight"], 1, 1))
  if attention == "sl":  # SLayer: y = fc(avg_pool(x)); x * y
    y = out.mean(axis=(2, 3)) @ sd[f"{pre}.sl.fc.weight"].T
    out = out * y[:, :, None, None]
  if f"{pre}.downsample.0.weight" in sd:
    x = _bn(sd, f"{pre}.downsample.1",
            _conv2d(x, sd[f"{pre}.downsample.0.weight"], stride))
  return _relu(out + x)


def _torch_resnet(sd, x, stage_sizes, kind):
  """torchvision ``ResNet.forward`` with the seed's head (eval mode)."""
  x = _relu(_bn(sd, "bn1", _conv2d(x, sd["conv1.weight"], 2, 3)))
  x = _max_pool_3x3_s2(x)
  for s, size in enumerate(stage_sizes):
    for b in range(size):
      x = _torch_block(sd, f"layer{s + 1}.{b}", x, kind,
                       2 if s > 0 and b == 0 else 1)
  x = x.mean(axis=(2, 3))
  if "fc.weight" in sd:
    return x @ sd["fc.weight"].T + sd["fc.bias"]
  for i in (0, 2, 4):  # Linear, Dropout (identity in eval), ... no activations
    x = x @ sd[f"fc.{i}.weight"].T + sd[f"fc.{i}.bias"]
  return x


# --------------------------------------------------------------------------
# Parameter counts (specs/seeds.md, "Seed 001" 5, verified there).
# --------------------------------------------------------------------------


@pytest.mark.parametrize("depth, num_classes, expected", [
    (50, 1000, 46_763_560), (101, 1000, 83_581_480), (152, 1000, 113_905_192),
    (50, 100, 46_301_860), (101, 100, 83_119_780), (152, 100, 113_443_492),
    (50, 10, 46_255_690), (101, 10, 83_073_610), (152, 10, 113_397_322),
])
def test_slresnet_param_count_matches_seed(depth, num_classes, expected):
  model = SLResNet(depth=depth, num_classes=num_classes)
  assert _param_count(model) == expected


def test_slresnet34_param_count():
  # torchvision resnet34 (21,797,672) + one SLayer(planes) per block, sum p^2.
  sl = 3 * 64**2 + 4 * 128**2 + 6 * 256**2 + 3 * 512**2
  assert _param_count(SLResNet(depth=34)) == 21_797_672 + sl


@pytest.mark.parametrize("depth, params, buffers", [
    (34, 21_797_672, 17_024), (50, 25_557_032, 53_120),
    (101, 44_549_160, 105_344), (152, 60_192_808, 151_424)])
def test_plain_resnet_matches_torchvision_counts(depth, params, buffers):
  # attention="none" with the linear head is torchvision's resnetN exactly;
  # batch_stats are its running_mean + running_var buffers.
  model = SLResNet(depth=depth, attention="none", head="linear")
  assert _param_count(model) == params
  assert _param_count(model, collection="batch_stats") == buffers


def test_slresnet50_state_dict_keys_and_shapes():
  shapes = jax.eval_shape(lambda: SLResNet().init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes))
  sd = {_torch_key(p): v.shape for p, v in flat.items()}
  num_bn = sum(k.endswith("running_mean") for k in sd)
  # The seed's 340 entries include one num_batches_tracked per BatchNorm.
  assert len(sd) + num_bn == 340
  assert sd["conv1.weight"] == (7, 7, 3, 64)  # Flax layout of [64,3,7,7]
  assert sd["layer1.0.downsample.0.weight"] == (1, 1, 64, 256)
  assert sd["layer4.2.sl.fc.weight"] == (2048, 2048)
  assert sd["layer3.5.bn3.running_var"] == (1024,)
  assert sd["fc.0.weight"] == (2048, 1024)  # kernel = fc.0.weight.T
  assert sd["fc.4.bias"] == (1000,)
  assert "layer1.1.downsample.0.weight" not in sd


# --------------------------------------------------------------------------
# SLayer: the unbounded bilinear gate.
# --------------------------------------------------------------------------


def test_slayer_is_x_times_gap_times_w():
  x = _images((2, 5, 6, 8))
  rng = np.random.default_rng(0)
  w = rng.normal(size=(8, 8)).astype(np.float32)  # torch weight [out, in]
  with jax.default_matmul_precision("float32"):
    out = SLayer().apply({"params": {"fc": {"kernel": w.T}}}, x)
  xn = np.asarray(x, np.float64)
  ref = xn * (xn.mean(axis=(1, 2)) @ w.T.astype(np.float64))[:, None, None, :]
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_slayer_gate_is_unbounded_and_may_be_negative():
  x = jnp.ones((1, 3, 3, 4)) * jnp.arange(1.0, 5.0)  # positive input
  kernel = -3.0 * jnp.eye(4)  # gate_c = -3 * mean_c: no sigmoid, no ReLU
  out = SLayer().apply({"params": {"fc": {"kernel": kernel}}}, x)
  np.testing.assert_allclose(out, -3.0 * x * x)
  assert float(out.max()) < 0
  assert float(jnp.abs(out).max()) > float(jnp.abs(x).max())


def test_slayer_init_is_torch_linear_default():
  c = 256
  params = _init(SLayer(), jnp.zeros((1, 2, 2, c)))["params"]
  kernel = np.asarray(params["fc"]["kernel"])
  assert kernel.shape == (c, c) and set(params["fc"]) == {"kernel"}  # no bias
  bound = 1 / math.sqrt(c)
  assert np.abs(kernel).max() <= bound
  assert np.abs(kernel).max() > 0.99 * bound


# --------------------------------------------------------------------------
# Numerics against torchvision's math (NCHW, float64).
# --------------------------------------------------------------------------


@pytest.mark.parametrize("block_cls, kind, planes, stride, in_channels", [
    (Bottleneck, "bottleneck", 4, 2, 8),  # downsample with stride
    (Bottleneck, "bottleneck", 4, 1, 16),  # identity shortcut
    (BasicBlock, "basic", 6, 2, 4),
])
def test_block_matches_torchvision_math(block_cls, kind, planes, stride,
                                        in_channels):
  # Even height: stride-2 "SAME" would pad asymmetrically, PyTorch does not.
  x = _images((2, 10, 7, in_channels))
  block = block_cls(planes=planes, stride=stride)
  variables = _randomize_bn(_init(block, x))
  out = _apply(block, variables, x)
  sd = _state_dict(variables)
  out_channels = planes * block_cls.expansion
  assert ("downsample.0.weight" in sd) == (stride != 1 or in_channels != out_channels)
  sd = {f"b.{k}": v for k, v in sd.items()}
  ref = _torch_block(sd, "b", np.asarray(x, np.float64).transpose(0, 3, 1, 2),
                     kind, stride)
  np.testing.assert_allclose(out, ref.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("block, head", [("bottleneck", "slresnet"),
                                         ("basic", "linear")])
def test_tiny_resnet_matches_torchvision_math(block, head):
  x = _images()
  model = ResNet(**dict(_TINY, block=block, head=head))
  variables = _randomize_bn(_init(model, x))
  logits = _apply(model, variables, x)
  ref = _torch_resnet(_state_dict(variables),
                      np.asarray(x, np.float64).transpose(0, 3, 1, 2),
                      _TINY["stage_sizes"], block)
  np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)


def test_max_pool_pads_with_minus_infinity_like_pytorch():
  # All-negative input: zero padding would win every border window.
  x = -1.0 - jnp.abs(_images((2, 7, 8, 3)))
  out = resnet.max_pool_3x3_s2(x)
  ref = _max_pool_3x3_s2(np.asarray(x, np.float64).transpose(0, 3, 1, 2))
  np.testing.assert_array_equal(out, ref.transpose(0, 2, 3, 1))
  assert out.shape == (2, 4, 4, 3)
  assert float(out.max()) < 0
  # And under bfloat16 compute (-inf is representable there too).
  assert float(resnet.max_pool_3x3_s2(x.astype(jnp.bfloat16)).max()) < 0


# --------------------------------------------------------------------------
# Shapes, dtypes, train/eval, remat.
# --------------------------------------------------------------------------


def test_tiny_forward_train_and_eval():
  x = _images()
  model = ResNet(**_TINY)
  variables = _init(model, x)
  logits = _apply(model, variables, x)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  np.testing.assert_array_equal(logits, _apply(model, variables, x))

  train_logits, new_state = _apply(model, variables, x, True)
  assert train_logits.shape == (2, 7) and train_logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(train_logits)))
  # Dropout and batch statistics: train logits differ from eval ones.
  assert not np.allclose(train_logits, logits)
  # torchvision's momentum 0.1: running mean 0 -> 0.1 * batch mean of conv1.
  stem = jax.lax.conv_general_dilated(
      x, variables["params"]["conv1"]["kernel"], (2, 2), ((3, 3), (3, 3)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST)
  np.testing.assert_allclose(new_state["batch_stats"]["bn1"]["mean"],
                             0.1 * stem.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
  assert jax.tree.structure(new_state["batch_stats"]) == jax.tree.structure(
      variables["batch_stats"])


def test_bfloat16_compute_returns_float32_logits():
  x = _images()
  variables = _init(ResNet(**_TINY), x)
  shapes = jax.eval_shape(ResNet(**_TINY, dtype=jnp.bfloat16).init,
                          jax.random.key(0), x)
  assert {v.dtype for v in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  ref = _apply(ResNet(**_TINY), variables, x)
  low = _apply(ResNet(**_TINY, dtype=jnp.bfloat16), variables, x)
  assert low.dtype == jnp.float32 and low.shape == (2, 7)
  np.testing.assert_allclose(low, ref, atol=0.1 * float(jnp.abs(ref).max()) + 0.05)


def test_remat_keeps_names_outputs_and_gradients():
  x = _images((2, 16, 16, 3))
  small = dict(_TINY, stage_sizes=(2,), head="linear")  # compile time
  plain, remat = ResNet(**small), ResNet(**small, remat=True)
  variables = _init(plain, x)
  assert jax.tree.structure(_init(remat, x)) == jax.tree.structure(variables)

  @functools.partial(jax.jit, static_argnums=0)
  def grads(model, params):
    def loss(p):
      logits, _ = model.apply({**variables, "params": p}, x, train=True,
                              mutable=["batch_stats"],
                              rngs={"dropout": jax.random.key(1)})
      return jnp.sum(logits**2)
    return jax.grad(loss)(params)

  g_plain = grads(plain, variables["params"])
  g_remat = grads(remat, variables["params"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               g_plain, g_remat)


# --------------------------------------------------------------------------
# Initialisation: torchvision's.
# --------------------------------------------------------------------------


def test_init_follows_torchvision():
  variables = _init(ResNet(**_TINY), _images())
  params = variables["params"]
  conv = np.asarray(params["layer2_0"]["conv2"]["kernel"])  # 3x3, 16 -> 16
  std = math.sqrt(2.0 / (3 * 3 * 16))  # kaiming_normal, fan_out, relu
  assert abs(conv.std() / std - 1) < 0.1
  # Untruncated: a 2-sigma-truncated normal never exceeds 2 std.
  assert np.abs(conv).max() > 2.5 * std
  np.testing.assert_array_equal(params["bn1"]["scale"], 1.0)
  np.testing.assert_array_equal(params["bn1"]["bias"], 0.0)
  for name, fan_in in (("fc_0", 8 * 8 * 4), ("fc_2", 1024), ("fc_4", 512)):
    bound = 1 / math.sqrt(fan_in)
    for leaf in ("kernel", "bias"):
      assert np.abs(np.asarray(params[name][leaf])).max() <= bound


# --------------------------------------------------------------------------
# Registry, depths and heads.
# --------------------------------------------------------------------------


def test_registry_and_seed_heads():
  assert isinstance(create_model("slresnet", depth=101), SLResNet)
  assert isinstance(create_model("gsop_resnet"), GSoPResNet)
  shapes = jax.eval_shape(lambda: SLResNet(depth=34, num_classes=5).init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3))))["params"]
  assert set(shapes["fc"]) == {"kernel", "bias"}  # ResNet-34: one Linear
  assert shapes["fc"]["kernel"].shape == (512, 5)
  assert shapes["layer1_0"]["sl"]["fc"]["kernel"].shape == (64, 64)
  shapes = jax.eval_shape(lambda: SLResNet(num_classes=5).init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3))))["params"]
  assert [shapes[n]["kernel"].shape for n in ("fc_0", "fc_2", "fc_4")] == [
      (2048, 1024), (1024, 512), (512, 5)]


@pytest.mark.parametrize("name", ["slresnet", "gsop_resnet"])
def test_unsupported_depth_lists_valid_depths(name):
  with pytest.raises(ValueError, match="34, 50, 101, 152"):
    create_model(name, depth=18)


def test_unknown_attention_is_rejected():
  with pytest.raises(ValueError, match="sl, gsop, none"):
    SLResNet(attention="se")
  with pytest.raises(ValueError, match="slresnet, linear"):
    ResNet(stage_sizes=(1,), head="mlp")
  with pytest.raises(ValueError, match="all, last"):
    create_model("gsop_resnet", attention_in="first")


def test_non_nhwc_input_is_rejected():
  with pytest.raises(ValueError, match="batch, height, width, channels"):
    ResNet(**_TINY).init(jax.random.key(0), jnp.zeros((32, 32, 3)))


# --------------------------------------------------------------------------
# GSoP-Net.
# --------------------------------------------------------------------------


def test_gsop_resnet_builds_and_runs():
  x = _images()
  # Two stages, two blocks each, GSoP in the last block of each (GSoP-Net's
  # placement); both dimension-reduction strides are exercised.
  model = ResNet(**dict(_TINY, stage_sizes=(2, 2)), attention="gsop",
                 attention_in="last", head="linear")
  variables = _init(model, x)
  params = variables["params"]
  assert "gsop" not in params["layer1_0"] and "gsop" not in params["layer2_0"]
  # planes <= 64: stride-2 dimension reduction (9x10 map -> 5x5 positions).
  assert params["layer1_1"]["gsop"]["conv_for_DR"]["kernel"].shape == (1, 1, 32, 128)
  logits, state = _apply(model, variables, x, True)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  assert "gsop" in state["batch_stats"]["layer2_1"]
  assert _apply(model, variables, x).shape == (2, 7)


def test_gsop_resnet50_follows_official_gsop_net1():
  model, images = create_model("gsop_resnet"), jnp.zeros((1, 224, 224, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  shapes = variables["params"]
  # torchvision R50 + one GSoP block (641 C + 66,688 params with d=128) at
  # the end of each stage: the paper's 28.29M.
  gsop = sum(641 * c + 66_688 for c in (256, 512, 1024, 2048))
  assert _param_count(model) == 25_557_032 + gsop == 28_285_224
  with_gsop = sorted(k for k, v in shapes.items() if "gsop" in v)
  assert with_gsop == ["layer1_2", "layer2_3", "layer3_5", "layer4_2"]
  assert shapes["fc"]["kernel"].shape == (2048, 1000)
  # layer4 keeps stride 1: a 14x14 final map at 224x224 (output stride 16).
  _, state = jax.eval_shape(
      lambda v: model.apply(v, images, capture_intermediates=True,
                            mutable=["intermediates"]), variables)
  assert state["intermediates"]["layer4_2"]["__call__"][0].shape == (1, 14, 14, 2048)
