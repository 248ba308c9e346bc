"""Tests for jaxattn.torch_models: PyTorch twins of every Flax architecture.

Three kinds of checks:

* counts: for every registry entry, a tiny variant built from one set of
  kwargs has as many PyTorch parameters as the Flax ``params`` and as many
  running_mean + running_var values as Flax ``batch_stats``; and the full-size
  models have the spec's counts (``specs/seeds.md``), built on the meta
  device (no memory, no init).
* keys: the spec's state_dict key lists (seeds 001-004, torchvision's
  resnet50, timm's VisionTransformer).
* parity: random Flax variables are converted by ``jaxattn.convert`` (the
  default layout of each model), loaded with ``load_state_dict(strict=True)``,
  and eval-mode outputs compared; each module also has the layout's numerics
  (LayerNorm/BatchNorm eps, GELU approximation).
"""

import functools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import traverse_util  # noqa: E402

from jaxattn import convert  # noqa: E402
from jaxattn.models import create_model  # noqa: E402
from jaxattn.models import get_spec, known_models  # noqa: E402
from jaxattn.torch_models import create_torch_model, torch_model_names  # noqa: E402

# name -> (kwargs for both frameworks, NCHW input shape). Tiny, but every code
# path: non-square images, several heads, every block kind.
_TINY = {
    "conv_vit": (dict(num_classes=5, patch_size=2, hidden_dim=16, depth=2,
                      head_channels=4, mlp_ratio=2), (2, 3, 8, 12)),
    "vit": (dict(num_classes=5, patch_size=4, hidden_dim=16, depth=2,
                 num_heads=2, mlp_dim=24), (2, 3, 12, 16)),
    "se_cnn": (dict(num_classes=6), (2, 2, 16, 20)),
    "sa_cnn": (dict(num_classes=6), (2, 2, 16, 20)),
    "slresnet": (dict(num_classes=7, stage_sizes=(1, 1, 1, 1), width=8),
                 (2, 3, 34, 40)),
    "gsop_resnet": (dict(num_classes=7, stage_sizes=(1, 1, 1, 1), width=8),
                    (2, 3, 34, 40)),
    "hybrid": (dict(num_classes=5, patch_size=8, hidden_dim=16, depth=2,
                    num_heads=2, mlp_dim=32), (2, 3, 32, 32)),
    "hybrid_head": (dict(num_classes=5), (2, 1000)),
}

# Extra parity cases: other blocks, switches and heads.
_VARIANTS = [
    ("slresnet", dict(depth=34)),
    ("slresnet", dict(attention="none", head="linear")),
    ("hybrid", dict(refinement="bottleneck", duplicate_avg_branch=False,
                    double_normalization=True)),
]


def _torch_kwargs(name, kwargs, shape):
  """The input geometry PyTorch needs at construction (Flax infers it)."""
  if len(shape) == 2:
    return dict(kwargs)
  extra = {"in_channels": shape[1]}
  if name != "slresnet" and name != "gsop_resnet":
    extra["image_size"] = shape[2:]
  return {**kwargs, **extra}


def _flax_inputs(shape, seed=0):
  x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
  return x if len(shape) == 2 else x.transpose(0, 2, 3, 1)  # NCHW -> NHWC


def _count(tree):
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _torch_counts(model):
  params = sum(p.numel() for p in model.parameters())
  stats = sum(b.numel() for k, b in model.state_dict().items()
              if k.endswith(("running_mean", "running_var")))
  return params, stats


@pytest.mark.parametrize("name", sorted(_TINY))
def test_tiny_counts_match_flax(name):
  kwargs, shape = _TINY[name]
  flax_model = create_model(name, **kwargs)
  shapes = jax.eval_shape(flax_model.init, jax.random.key(0),
                          jnp.zeros(_flax_inputs(shape).shape))
  model = create_torch_model(name, **_torch_kwargs(name, kwargs, shape))
  assert _torch_counts(model) == (_count(shapes["params"]),
                                  _count(shapes.get("batch_stats", {})))


def test_every_registered_model_has_a_twin():
  assert torch_model_names() == known_models()
  for name in known_models():
    assert callable(get_spec(name).load_torch_twin())
  with pytest.raises(ValueError, match="Known PyTorch models"):
    create_torch_model("resnet")


def _meta(name, **kwargs):
  with torch.device("meta"):
    return create_torch_model(name, **kwargs)


@pytest.mark.parametrize("name, kwargs, params", [
    ("conv_vit", {}, 59_818),
    ("vit", dict(image_size=28, in_channels=1), 6_339_082),
    ("vit", {}, 6_351_114),
    ("vit", dict(num_classes=100), 6_374_244),
    ("se_cnn", {}, 354_446),
    ("sa_cnn", {}, 356_525),
    ("se_cnn", dict(block="none"), 354_270),
    ("slresnet", {}, 46_763_560),
    ("slresnet", dict(num_classes=100), 46_301_860),
    ("slresnet", dict(depth=101), 83_581_480),
    ("slresnet", dict(depth=152), 113_905_192),
    ("slresnet", dict(attention="none", head="linear"), 25_557_032),
    ("gsop_resnet", {}, 28_285_224),
    ("hybrid_head", {}, 2_580_582),  # + 1,884 BN statistics = Keras' 2,582,466
    ("hybrid_head", dict(num_classes=100), 2_586_522),
    ("hybrid_head", dict(num_classes=196), 2_592_858),
    ("hybrid_head", dict(num_classes=100, refinement="bottleneck"),
     2_586_522 + 1_443_000),
    ("hybrid", {}, 86_576_872 + 2_580_582),
])
def test_full_size_counts(name, kwargs, params):
  assert _torch_counts(_meta(name, **kwargs))[0] == params


def test_seed_001_keys():
  sd = _meta("slresnet").state_dict()
  assert len(sd) == 340
  assert sd["layer1.0.sl.fc.weight"].shape == (256, 256)
  assert sd["layer4.2.sl.fc.weight"].shape == (2048, 2048)
  assert sd["fc.0.weight"].shape == (1024, 2048)
  assert sd["fc.2.weight"].shape == (512, 1024)
  assert sd["fc.4.weight"].shape == (1000, 512)
  assert "layer3.0.downsample.1.num_batches_tracked" in sd
  assert "layer3.1.downsample.0.weight" not in sd
  # Seed 001's 34 keeps torchvision's single Linear.
  assert _meta("slresnet", depth=34, num_classes=10).state_dict()[
      "fc.weight"].shape == (10, 512)


def _torchvision_resnet50_keys():
  """torchvision's resnet50 state_dict keys, spelled out (no torchvision)."""
  bn = lambda p: [f"{p}.{s}" for s in ("weight", "bias", "running_mean",
                                        "running_var", "num_batches_tracked")]
  keys = ["conv1.weight", *bn("bn1")]
  for s, size in enumerate((3, 4, 6, 3), start=1):
    for b in range(size):
      p = f"layer{s}.{b}"
      for k in (1, 2, 3):
        keys += [f"{p}.conv{k}.weight", *bn(f"{p}.bn{k}")]
      if b == 0:
        keys += [f"{p}.downsample.0.weight", *bn(f"{p}.downsample.1")]
  return keys + ["fc.weight", "fc.bias"]


def test_plain_resnet50_has_torchvision_keys():
  sd = _meta("slresnet", attention="none", head="linear").state_dict()
  assert list(sd) == _torchvision_resnet50_keys()  # 320, in torchvision's order


def test_gsop_keys_sit_directly_under_the_block():
  sd = _meta("gsop_resnet").state_dict()
  gsop_blocks = {k.rsplit(".", 2)[0] for k in sd if ".conv_for_DR." in k}
  assert gsop_blocks == {"layer1.2", "layer2.3", "layer3.5", "layer4.2"}
  assert sd["layer1.2.row_conv_group.weight"].shape == (512, 1, 128, 1)
  assert sd["layer4.2.fc_adapt_channels.weight"].shape == (2048, 512, 1, 1)
  assert sd["fc.weight"].shape == (1000, 2048)
  assert not any("gsop" in k or ".sl." in k for k in sd)
  model = _meta("gsop_resnet")
  assert model.layer1[2].conv_for_DR.stride == (2, 2)  # planes 64
  assert model.layer2[3].conv_for_DR.stride == (1, 1)  # planes 128
  assert model.layer4[0].conv2.stride == (1, 1)        # GSoP-Net1: layer4 s1


def test_seed_002_keys():
  sd = _meta("vit").state_dict()
  assert sd["patch_embedding.class_token"].shape == (256, 1)
  assert sd["patch_embedding.positional_embedding"].shape == (256, 65)
  assert sd["patch_embedding.patch_layer.weight"].shape == (256, 3, 4, 4)
  assert sd["transformer_encoder.11.self_attention.in_proj_weight"].shape == (768, 256)
  assert sd["transformer_encoder.0.self_attention.in_proj_bias"].shape == (768,)
  assert sd["transformer_encoder.0.self_attention.out_proj.weight"].shape == (256, 256)
  assert sd["transformer_encoder.0.mlp_block.0.weight"].shape == (512, 256)
  assert sd["transformer_encoder.0.mlp_block.2.weight"].shape == (256, 512)
  assert sd["transformer_encoder.0.layer_norm.weight"].shape == (256,)
  assert sd["output_layer.weight"].shape == (10, 256)
  assert len(sd) == 4 + 12 * 10 + 2  # per block: LN 2, in_proj 2, out_proj 2, MLP 4


def test_seed_003_keys():
  se = _meta("se_cnn").state_dict()
  assert {k: tuple(v.shape) for k, v in se.items() if ".fc." in k} == {
      "3.fc.0.weight": (0, 12), "3.fc.2.weight": (12, 0),
      "7.fc.0.weight": (1, 24), "7.fc.2.weight": (24, 1),
      "11.fc.0.weight": (2, 32), "11.fc.2.weight": (32, 2)}
  assert se["13.weight"].shape == (200, 1568)
  assert se["17.weight"].shape == (10, 200)
  assert {k.split(".")[0] for k in se if "running_mean" in k} == {"1", "5", "9", "14"}
  sa = _meta("sa_cnn").state_dict()
  assert sa["3.gamma"].shape == (1,)
  assert sa["7.query_conv.weight"].shape == (3, 24, 1, 1)
  assert sa["11.value_conv.bias"].shape == (32,)
  # Every BN weight frozen, as in the seed: 268 values.
  frozen = [p for p in create_torch_model("se_cnn").parameters()
            if not p.requires_grad]
  assert sum(p.numel() for p in frozen) == 268


def test_seed_004_keys():
  sd = _meta("conv_vit").state_dict()
  assert sd["embedding.pos_embedding"].shape == (1, 32, 16, 16)
  assert sd["embedding.patch.weight"].shape == (32, 3, 2, 2)
  for i in range(4):
    assert sd[f"transformer.layers.{i}.0.lnorm.weight"].shape == (32,)
    for k in ("k", "q", "v", "unify_heads"):
      assert sd[f"transformer.layers.{i}.0.fn.{k}.weight"].shape == (32, 32, 1, 1)
    assert sd[f"transformer.layers.{i}.1.lnorm.bias"].shape == (32,)
    assert sd[f"transformer.layers.{i}.1.fn.net.0.weight"].shape == (128, 32, 1, 1)
    assert sd[f"transformer.layers.{i}.1.fn.net.2.weight"].shape == (32, 128, 1, 1)
  assert sd["norm.weight"].shape == (32,)
  assert sd["mlp_head.3.weight"].shape == (10, 32)
  assert len(sd) == 1 + 2 + 4 * 16 + 2 + 2  # per layer: 2 LN, 4 convs, 2 convs


def test_seed_000_keys():
  sd = _meta("hybrid").state_dict()
  backbone = {k[len("backbone."):]: v for k, v in sd.items()
              if k.startswith("backbone.")}
  assert backbone["cls_token"].shape == (1, 1, 768)
  assert backbone["pos_embed"].shape == (1, 785, 768)
  assert backbone["patch_embed.proj.weight"].shape == (768, 3, 8, 8)
  assert backbone["blocks.11.attn.qkv.weight"].shape == (2304, 768)
  assert backbone["blocks.0.attn.proj.weight"].shape == (768, 768)
  assert backbone["blocks.0.mlp.fc1.weight"].shape == (3072, 768)
  assert {"blocks.0.norm1.weight", "blocks.0.norm2.bias", "norm.weight",
          "head.bias", "blocks.0.mlp.fc2.bias"} <= set(backbone)
  assert backbone["head.weight"].shape == (1000, 768)
  assert sd["fusion.decrease_dimension_1.weight"].shape == (500, 1033, 1)
  assert sd["fusion.conv2D_1_module_1.weight"].shape == (500, 1033, 3)
  assert sd["fusion.conv2D_3_module_1.weight"].shape == (500, 1, 250)
  assert sd["fusion.dense2w.weight"].shape == (64, 2000)
  assert sd["fusion.vit_logits.weight"].shape == (10, 32)
  assert "fusion.dense_vit12_bn.running_var" in sd
  bn = [m for m in create_torch_model("hybrid_head").modules()
        if isinstance(m, torch.nn.BatchNorm1d)]
  assert len(bn) == 6 and all(m.eps == 1e-3 and m.momentum == 0.01 for m in bn)


# --------------------------------------------------------------------------
# Parity: Flax variables -> PyTorch state_dict -> same outputs.
# --------------------------------------------------------------------------

def _to_state_dict(name, variables, target):
  """The real converter (``jaxattn.convert``), checked key by key and shape by
  shape against the PyTorch module's own state_dict."""
  sd, _ = convert.state_dict_from_variables(name, variables)
  assert {k: tuple(v.shape) for k, v in sd.items()} == {
      k: tuple(v.shape) for k, v in target.items()}
  return {k: torch.from_numpy(v) for k, v in sd.items()}


def _randomize(variables, seed=0):
  """Perturbs every leaf (zero biases, gamma=0, BN statistics included)."""
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(variables)
  for path, v in flat.items():
    if path[-1] == "var":
      flat[path] = rng.uniform(0.5, 2.0, v.shape).astype(np.float32)
    else:
      flat[path] = (np.asarray(v) + rng.normal(0, 0.05, v.shape)).astype(np.float32)
  return traverse_util.unflatten_dict(flat)


@functools.partial(jax.jit, static_argnums=0)
def _flax_init(model, x):
  return model.init(jax.random.key(0), x)


@functools.partial(jax.jit, static_argnums=0)
def _flax_apply(model, variables, x):
  return model.apply(variables, x)


_PARITY = [(name, {}) for name in sorted(_TINY)] + _VARIANTS


@pytest.mark.parametrize("name, extra", _PARITY,
                         ids=[f"{n}-{'-'.join(map(str, e.values())) or 'tiny'}"
                              for n, e in _PARITY])
def test_eval_outputs_match_flax(name, extra):
  kwargs, shape = _TINY[name]
  kwargs = {**kwargs, **extra}
  x = _flax_inputs(shape)
  if name == "hybrid" and kwargs.get("double_normalization"):
    x = np.tanh(x)  # inputs already in [-1, 1]
  flax_model = create_model(name, **kwargs)
  with jax.default_matmul_precision("float32"):
    variables = _randomize(_flax_init(flax_model, x))
    want = _flax_apply(flax_model, variables, x)
  model = create_torch_model(name, **_torch_kwargs(name, kwargs, shape)).eval()
  assert convert.check_numerics(model, convert.get_layout(name)) == []
  model.load_state_dict(_to_state_dict(name, variables, model.state_dict()),
                        strict=True)
  x_torch = torch.from_numpy(x if x.ndim == 2 else x.transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    got = model(x_torch)
  if not isinstance(want, dict):
    want, got = {"out": want}, {"out": got}
  assert set(got) == set(want)
  for k in want:
    w = np.asarray(want[k])
    np.testing.assert_allclose(got[k].numpy(), w, rtol=1e-4,
                               atol=1e-4 * max(1.0, np.abs(w).max()), err_msg=k)
