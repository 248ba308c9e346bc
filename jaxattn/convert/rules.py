"""Flax module paths <-> PyTorch keys: one rule table per architecture family.

A rule maps Flax modules (a regex over the '/'-joined module path) to a
PyTorch module prefix (the regex's groups fill ``\\1``...) and says what kind
of layer it is. The kind names the leaves on both sides and the tensor rule
between them (``tensors.py``)::

  dense       kernel -> weight (DENSE), bias -> bias            torch.nn.Linear
  conv        kernel -> weight (CONV), bias -> bias             Conv1d / Conv2d
  conv1x1     kernel -> weight (DENSE_AS_CONV1X1), bias         a Flax Dense standing
                                                                for a 1x1 Conv2d
  layer_norm  scale -> weight, bias -> bias                     LayerNorm
  batch_norm  params scale/bias -> weight/bias, batch_stats mean/var ->
              running_mean/running_var, + num_batches_tracked   BatchNorm{1,2}d
  torch_mha   query/key/value -> in_proj_weight/in_proj_bias (q;k;v rows),
              out -> out_proj                                   nn.MultiheadAttention
  timm_attn   query/key/value [D,H,D/H] -> qkv (fused), out [H,D/H,D] -> proj
  subtree     every params leaf under the module, same layout, '/'-joined
              (the vit_jax .npz layout)

Both directions use the same table, so a round trip is exact. A *layout* is a
named rule table for one model (``LAYOUTS[model][name]``, the first is the
default): the seed authors' own PyTorch modules for seeds 001-004, the
project's PyTorch module for seed 000 (Keras has no PyTorch original), and the
standard libraries' layouts where an architecture matches one (torchvision
ResNet, timm VisionTransformer, vit_jax). A *partial* layout covers part of
the model: on export the rest is left out, on import it stays at its
initialisation (recorded in ``conversion.json``).

Each layout also records the numerics a PyTorch module needs for the same
outputs (``Numerics``), because some traps are invisible in a state_dict:
PyTorch's LayerNorm eps is 1e-5 and Flax's 1e-6; ``torch.nn.GELU`` is exact
and ``flax.linen.gelu`` tanh-approximate; Flax's 'SAME' padding is
asymmetric for stride 2. ``check_numerics`` compares a module against them;
the ``jaxattn.torch_models`` twins pass.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import numpy as np

from jaxattn import weights
from jaxattn.convert.tensors import (
    CONV, COPY, DENSE, DENSE_AS_CONV1X1, HEADS_TO_DENSE, MAP_LAST_TO_FIRST,
    NUM_BATCHES_TRACKED, QKV_BIAS, QKV_KERNEL, TOKENS_LAST_TO_FIRST,
    TensorRule)
from jaxattn.errors import BadInputError

FlaxKey = tuple[str, ...]  # (collection, *module path, leaf)


# --------------------------------------------------------------------------
# Kinds of layers: which leaves, which tensor rule.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Slot:
  """One PyTorch tensor of a module and the Flax leaves it is made of.

  ``flax`` holds (collection, *path relative to the module) per part.
  ``optional`` slots may be absent in the Flax tree (a bias-free conv);
  slots without Flax parts (``num_batches_tracked``) exist only in PyTorch.
  """

  torch: str
  flax: tuple[FlaxKey, ...]
  rule: TensorRule = COPY
  optional: bool = False


class Kind:
  """A kind of layer: its slots, given the leaves found under the module."""

  def __init__(self, name: str, slots: Sequence[Slot] = ()):
    self.name = name
    self._slots = tuple(slots)

  def slots(self, leaves: Sequence[FlaxKey]) -> tuple[Slot, ...]:
    del leaves
    return self._slots

  def __repr__(self) -> str:
    return self.name


class _Subtree(Kind):
  """Every ``params`` leaf under the module, path joined as the key."""

  def slots(self, leaves):
    return tuple(Slot("/".join(k[1:]), (k,)) for k in sorted(leaves)
                 if k[0] == "params")


def _p(*path: str) -> FlaxKey:
  return ("params", *path)


def _weight_bias(rule: TensorRule) -> tuple[Slot, ...]:
  return (Slot("weight", (_p("kernel"),), rule),
          Slot("bias", (_p("bias"),), COPY, optional=True))


DENSE_LAYER = Kind("dense", _weight_bias(DENSE))
CONV_LAYER = Kind("conv", _weight_bias(CONV))
CONV1X1_LAYER = Kind("conv1x1", _weight_bias(DENSE_AS_CONV1X1))
LAYER_NORM = Kind("layer_norm", (Slot("weight", (_p("scale"),)),
                                 Slot("bias", (_p("bias"),))))
BATCH_NORM = Kind("batch_norm", (
    Slot("weight", (_p("scale"),)), Slot("bias", (_p("bias"),)),
    Slot("running_mean", (("batch_stats", "mean"),)),
    Slot("running_var", (("batch_stats", "var"),)),
    Slot("num_batches_tracked", (), NUM_BATCHES_TRACKED)))
_QKV = ("query", "key", "value")
TORCH_MHA = Kind("torch_mha", (
    Slot("in_proj_weight", tuple(_p(n, "kernel") for n in _QKV), QKV_KERNEL),
    Slot("in_proj_bias", tuple(_p(n, "bias") for n in _QKV), QKV_BIAS),
    Slot("out_proj.weight", (_p("out", "kernel"),), DENSE),
    Slot("out_proj.bias", (_p("out", "bias"),))))
TIMM_ATTENTION = Kind("timm_attn", (
    Slot("qkv.weight", tuple(_p(n, "kernel") for n in _QKV), QKV_KERNEL),
    Slot("qkv.bias", tuple(_p(n, "bias") for n in _QKV), QKV_BIAS),
    Slot("proj.weight", (_p("out", "kernel"),), HEADS_TO_DENSE),
    Slot("proj.bias", (_p("out", "bias"),))))
SUBTREE = _Subtree("subtree")


def params(**leaves: TensorRule | tuple[str, TensorRule]) -> Kind:
  """Parameters held by the module itself: ``flax_name=(torch_name, rule)``
  or ``name=rule`` when both sides use the same name."""
  slots = []
  for flax_name, spec in leaves.items():
    torch_name, rule = spec if isinstance(spec, tuple) else (flax_name, spec)
    slots.append(Slot(torch_name, (_p(flax_name),), rule))
  return Kind("params", slots)


@dataclasses.dataclass(frozen=True)
class Rule:
  flax: str   # regex, fullmatched against '/'-joined module paths ("" = root)
  torch: str  # prefix template (match.expand), "" for the top level
  kind: Kind


# --------------------------------------------------------------------------
# Layouts.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Numerics:
  """What the PyTorch module must compute for the Flax model's outputs."""

  layer_norm_eps: float | None = None  # every nn.LayerNorm
  gelu: str | None = None              # nn.GELU(approximate=...): "none"/"tanh"
  batch_norm_eps: float | None = None  # every nn.BatchNorm{1,2}d
  notes: str = ""                      # padding and other traps, in words


@dataclasses.dataclass(frozen=True)
class Layout:
  """A named rule table for one model.

  ``partial``: Flax variables without a rule are left out of an export and
  stay at their initialisation on import. ``ignore_on_import``: regexes of
  source keys dropped on import (torchvision's ImageNet ``fc``). ``resize``:
  (key regex, function(array, wanted shape)) applied on import when only a
  resizable dimension differs (positional embeddings). ``separator`` joins
  the prefix and the slot names ('.' for PyTorch, '/' for .npz layouts).
  """

  name: str
  description: str
  rules: tuple[Rule, ...]
  numerics: Numerics = Numerics()
  partial: bool = False
  ignore_on_import: tuple[str, ...] = ()
  resize: tuple[tuple[str, weights.Resizer], ...] = ()
  separator: str = "."
  file_format: str = "torch"  # "torch" (.safetensors/.pt) or "npz"

  def join(self, prefix: str, name: str) -> str:
    return f"{prefix}{self.separator}{name}" if prefix else name


# ---- Seed 004: the fully-convolutional ViT (jaxattn/models/conv_vit.py) ----

_SEED004 = Layout(
    "seed004",
    "seed 004's ViT (EVA-8 S10): embedding.*, transformer.layers.{i}.{0,1}.*, "
    "norm, mlp_head.3; a 'module.' prefix (DataParallel) is stripped on import",
    (Rule("embedding", "embedding",
          params(pos_embedding=MAP_LAST_TO_FIRST)),
     Rule("embedding/patch", "embedding.patch", CONV_LAYER),
     Rule(r"layers_(\d+)/attn_norm", r"transformer.layers.\1.0.lnorm",
          LAYER_NORM),
     Rule(r"layers_(\d+)/attn/(q|k|v|unify_heads)",
          r"transformer.layers.\1.0.fn.\2", CONV1X1_LAYER),
     Rule(r"layers_(\d+)/ff_norm", r"transformer.layers.\1.1.lnorm",
          LAYER_NORM),
     Rule(r"layers_(\d+)/ff/fc1", r"transformer.layers.\1.1.fn.net.0",
          CONV1X1_LAYER),
     Rule(r"layers_(\d+)/ff/fc2", r"transformer.layers.\1.1.fn.net.2",
          CONV1X1_LAYER),
     Rule("norm", "norm", LAYER_NORM),
     Rule("head", "mlp_head.3", DENSE_LAYER)),
    Numerics(layer_norm_eps=1e-5, gelu="none",
             notes="LayerNorm over the channel axis of NCHW maps; attention "
                   "softmax over dim=-2; GELU before the average pool."))

# ---- Seed 002: the ViT from scratch (jaxattn/models/vit.py) ----

_SEED002 = Layout(
    "seed002",
    "seed 002's AttentionModel: patch_embedding.* with the (D,1) class token "
    "and (D,N+1) positional embedding, transformer_encoder.{i}.* with "
    "nn.MultiheadAttention's fused in_proj, output_layer",
    (Rule("patch_embedding", "patch_embedding",
          params(class_token=TOKENS_LAST_TO_FIRST,
                 positional_embedding=TOKENS_LAST_TO_FIRST)),
     Rule("patch_embedding/patch_layer", "patch_embedding.patch_layer",
          CONV_LAYER),
     Rule(r"transformer_encoder_(\d+)/layer_norm",
          r"transformer_encoder.\1.layer_norm", LAYER_NORM),
     Rule(r"transformer_encoder_(\d+)/self_attention",
          r"transformer_encoder.\1.self_attention", TORCH_MHA),
     Rule(r"transformer_encoder_(\d+)/mlp_block/fc1",
          r"transformer_encoder.\1.mlp_block.0", DENSE_LAYER),
     Rule(r"transformer_encoder_(\d+)/mlp_block/fc2",
          r"transformer_encoder.\1.mlp_block.2", DENSE_LAYER),
     Rule("output_layer", "output_layer", DENSE_LAYER)),
    Numerics(layer_norm_eps=1e-5, gelu="none"))

# ---- Seed 003: MNIST CNN with SE / SA blocks (jaxattn/models/mnist_cnn.py) ----

_SEED003 = Layout(
    "seed003",
    "seed 003's nn.Sequential: {0,4,8} convs, {1,5,9,14} BatchNorms, "
    "{3,7,11} SE (fc.0, fc.2) or SA (query/key/value_conv, gamma) blocks, "
    "13 and 17 Linears",
    (Rule(r"conv_(\d+)", r"\1", CONV_LAYER),
     Rule(r"bn_(\d+)", r"\1", BATCH_NORM),
     Rule(r"se_(\d+)/fc_(\d+)", r"\1.fc.\2", DENSE_LAYER),
     Rule(r"sa_(\d+)", r"\1", params(gamma=COPY)),
     Rule(r"sa_(\d+)/(query|key|value)_conv", r"\1.\2_conv", CONV_LAYER),
     Rule(r"fc_(\d+)", r"\1", DENSE_LAYER)),
    Numerics(batch_norm_eps=1e-5,
             notes="Convolutions pad 2 on every side; the flatten before "
                   "Linear 13 is in (C, H, W) order."))

# ---- Seed 001 and GSoP-Net: torchvision ResNets (jaxattn/models/resnet.py) ----

_BLOCK = r"layer(\d)_(\d+)"
_RESNET_BACKBONE = (
    Rule("conv1", "conv1", CONV_LAYER),
    Rule("bn1", "bn1", BATCH_NORM),
    Rule(rf"{_BLOCK}/(conv\d)", r"layer\1.\2.\3", CONV_LAYER),
    Rule(rf"{_BLOCK}/(bn\d)", r"layer\1.\2.\3", BATCH_NORM),
    Rule(rf"{_BLOCK}/downsample_0", r"layer\1.\2.downsample.0", CONV_LAYER),
    Rule(rf"{_BLOCK}/downsample_1", r"layer\1.\2.downsample.1", BATCH_NORM))
_RESNET_ATTENTION = (
    Rule(rf"{_BLOCK}/sl/fc", r"layer\1.\2.sl.fc", DENSE_LAYER),
    # GSoP-Net names the block's tensors directly under the block.
    Rule(rf"{_BLOCK}/gsop/(conv_for_DR|row_conv_group|fc_adapt_channels)",
         r"layer\1.\2.\3", CONV_LAYER),
    Rule(rf"{_BLOCK}/gsop/(bn_for_DR|row_bn)", r"layer\1.\2.\3", BATCH_NORM))
_RESNET_HEAD = (
    Rule(r"fc_(\d)", r"fc.\1", DENSE_LAYER),
    Rule("fc", "fc", DENSE_LAYER))
_RESNET_NUMERICS = Numerics(
    batch_norm_eps=1e-5,
    notes="torchvision v1.5 blocks (stride on the 3x3 conv) with explicit "
          "symmetric padding (7x7/2 pad 3, 3x3 pad 1, max pool 3x3/2 pad 1).")

_SEED001 = Layout(
    "seed001",
    "seed 001's SL-ResNet: torchvision ResNet keys plus layerS.B.sl.fc.weight "
    "and the fc.0/2/4 head (fc for ResNet-34 or head='linear')",
    _RESNET_BACKBONE + _RESNET_ATTENTION + _RESNET_HEAD, _RESNET_NUMERICS)
_GSOPNET = Layout(
    "gsopnet",
    "GSoP-Net's official ResNet: torchvision keys plus the GSoP tensors "
    "(conv_for_DR, bn_for_DR, row_bn, row_conv_group, fc_adapt_channels) "
    "directly under layerS.B, and fc",
    _RESNET_BACKBONE + _RESNET_ATTENTION + _RESNET_HEAD, _RESNET_NUMERICS)
_TORCHVISION = Layout(
    "torchvision",
    "torchvision's ResNet backbone keys only (conv1, bn1, layerS.B.*): the "
    "attention modules and the head are left out on export and stay at "
    "their initialisation on import (torchvision's ImageNet fc is ignored), "
    "as the seed 001 authors loaded resnet50(pretrained=True)",
    _RESNET_BACKBONE, _RESNET_NUMERICS, partial=True,
    ignore_on_import=(r"fc\.(weight|bias)",))

# ---- Seed 000: ViT-B/8 backbone + fusion head (jaxattn/models/hybrid.py) ----


def _vit_backbone(flax: str, torch: str) -> tuple[Rule, ...]:
  """``ViTBackbone`` (vit_jax names) <-> timm's VisionTransformer keys."""
  f = f"{flax}/" if flax else ""
  enc = rf"{f}Transformer/encoderblock_(\d+)"
  t = lambda name: f"{torch}.{name}" if torch else name
  return (
      Rule(flax, torch, params(cls=("cls_token", COPY))),
      Rule(f"{f}embedding", t("patch_embed.proj"), CONV_LAYER),
      Rule(f"{f}Transformer/posembed_input", torch,
           params(pos_embedding=("pos_embed", COPY))),
      Rule(f"{enc}/LayerNorm_0", t(r"blocks.\1.norm1"), LAYER_NORM),
      Rule(f"{enc}/MultiHeadDotProductAttention_1", t(r"blocks.\1.attn"),
           TIMM_ATTENTION),
      Rule(f"{enc}/LayerNorm_2", t(r"blocks.\1.norm2"), LAYER_NORM),
      Rule(f"{enc}/MlpBlock_3/Dense_0", t(r"blocks.\1.mlp.fc1"), DENSE_LAYER),
      Rule(f"{enc}/MlpBlock_3/Dense_1", t(r"blocks.\1.mlp.fc2"), DENSE_LAYER),
      Rule(f"{f}Transformer/encoder_norm", t("norm"), LAYER_NORM),
      Rule(f"{f}head", t("head"), DENSE_LAYER))


def _fusion_head(flax: str, torch: str) -> tuple[Rule, ...]:
  """``HybridFusionHead``: the PyTorch twin keeps the Flax module names."""
  f = f"{flax}/" if flax else ""
  t = f"{torch}." if torch else ""
  return (
      Rule(f"{f}(decrease_dimension_1|conv2D_[123]_module_1)", rf"{t}\1",
           CONV_LAYER),
      Rule(rf"{f}(\w+_bn)", rf"{t}\1", BATCH_NORM),
      Rule(f"{f}(dense2w|dense1w|model0_logits|dense_vit11|dense_vit12|"
           f"vit_logits)", rf"{t}\1", DENSE_LAYER),
      Rule(f"{f}bottleneck/(conv|group_conv_1|depthwise|group_conv_2)",
           rf"{t}bottleneck.\1", CONV_LAYER))


_VIT_NUMERICS = Numerics(
    layer_norm_eps=1e-6, gelu="tanh",
    notes="vit_jax numerics. timm's VisionTransformer uses the exact GELU, "
          "so its outputs differ slightly from the Flax model's; "
          "jaxattn.torch_models' backbone uses GELU(approximate='tanh').")
_POSEMB_RESIZE = (r"(backbone\.)?pos_embed", weights.resize_posemb_hook)
_HYBRID_NUMERICS = dataclasses.replace(
    _VIT_NUMERICS, batch_norm_eps=1e-3,
    notes=_VIT_NUMERICS.notes + " Fusion head: Keras BatchNormalization (eps "
          "1e-3, PyTorch momentum 0.01) and TF 'same' padding (the extra pad "
          "on the right).")

_JAXATTN_HYBRID = Layout(
    "jaxattn",
    "jaxattn.torch_models.Hybrid (seed 000 is Keras, no PyTorch original): "
    "backbone.* with timm's VisionTransformer keys, fusion.* with the Flax "
    "module names",
    _vit_backbone("backbone", "backbone") + _fusion_head("fusion", "fusion"),
    _HYBRID_NUMERICS, resize=(_POSEMB_RESIZE,))
_TIMM_HYBRID = Layout(
    "timm",
    "timm's VisionTransformer (e.g. vit_base_patch8_224.augreg_in21k_ft_in1k):"
    " the hybrid's backbone alone with timm's top-level keys; the fusion head "
    "is left out on export and stays at its initialisation on import",
    _vit_backbone("backbone", ""), _VIT_NUMERICS, partial=True,
    resize=(_POSEMB_RESIZE,))
_VIT_JAX_HYBRID = Layout(
    "vit_jax",
    "a vit_jax / big_vision .npz (the AugReg ViT-B/8 the authors froze): the "
    "hybrid's backbone alone, '/'-joined vit_jax parameter names; the fusion "
    "head stays at its initialisation",
    (Rule("backbone", "", SUBTREE),), _VIT_NUMERICS, partial=True,
    resize=((r"Transformer/posembed_input/pos_embedding",
             weights.resize_posemb_hook),),
    separator="/", file_format="npz")
_JAXATTN_HYBRID_HEAD = Layout(
    "jaxattn",
    "jaxattn.torch_models.HybridFusionHead: the Flax module names",
    _fusion_head("", ""), dataclasses.replace(_HYBRID_NUMERICS, gelu=None,
                                              layer_norm_eps=None))


# model name -> {layout name: layout}; the first is the default.
LAYOUTS: dict[str, dict[str, Layout]] = {
    "conv_vit": {"seed004": _SEED004},
    "vit": {"seed002": _SEED002},
    "se_cnn": {"seed003": _SEED003},
    "sa_cnn": {"seed003": _SEED003},
    "slresnet": {"seed001": _SEED001, "torchvision": _TORCHVISION},
    "gsop_resnet": {"gsopnet": _GSOPNET, "torchvision": _TORCHVISION},
    "hybrid": {"jaxattn": _JAXATTN_HYBRID, "timm": _TIMM_HYBRID,
               "vit_jax": _VIT_JAX_HYBRID},
    "hybrid_head": {"jaxattn": _JAXATTN_HYBRID_HEAD},
}


class UnknownLayoutError(BadInputError, ValueError):
  """A layout name the model has no rules for; the message lists them."""


def describe_layouts(model: str) -> str:
  names = list(LAYOUTS[model])
  return ", ".join(f"{n} (default)" if i == 0 else n
                   for i, n in enumerate(names))


def get_layout(model: str, name: str | None = None) -> Layout:
  """``LAYOUTS[model][name]`` (default layout for None), or a clear error."""
  if model not in LAYOUTS:
    raise UnknownLayoutError(
        f"No conversion rules for model {model!r}; models with rules: "
        f"{', '.join(LAYOUTS)}.")
  layouts = LAYOUTS[model]
  if name in (None, "", "default"):
    return next(iter(layouts.values()))
  if name not in layouts:
    raise UnknownLayoutError(
        f"Unknown layout {name!r} for model {model!r}. Valid layouts: "
        f"{describe_layouts(model)}.")
  return layouts[name]


# --------------------------------------------------------------------------
# big_vision's own ViT names -> vit_jax's (what ViTBackbone uses).
# --------------------------------------------------------------------------

_BIG_VISION_RENAMES = (
    (r"/MultiHeadDotProductAttention_0/", "/MultiHeadDotProductAttention_1/"),
    (r"/LayerNorm_1/", "/LayerNorm_2/"),
    (r"/MlpBlock_0/", "/MlpBlock_3/"),
)


def from_big_vision(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A big_vision ViT .npz (top-level ``pos_embedding`` [1,N,D] added before
  the class token) in vit_jax's names (``Transformer/posembed_input`` with a
  class-token row). The two compute the same: big_vision adds no position to
  the class token, which is a zero row here. Other files pass unchanged.
  """
  flat = dict(flat)
  if all(k.startswith("params/") for k in flat):
    flat = {k[len("params/"):]: v for k, v in flat.items()}
  if "pos_embedding" not in flat:
    return flat
  if "cls" not in flat:
    raise ValueError(
        "This big_vision ViT has no class token (pool_type 'gap' or 'map'); "
        "the hybrid's backbone reads the class token, so it cannot use it.")
  out = {}
  for key, value in flat.items():
    if key == "pos_embedding":
      zero = np.zeros((1, 1, value.shape[-1]), value.dtype)
      out["Transformer/posembed_input/pos_embedding"] = np.concatenate(
          [zero, value], axis=1)
      continue
    for pattern, repl in _BIG_VISION_RENAMES:
      key = re.sub(pattern, repl, key)
    out[key] = value
  return out


# --------------------------------------------------------------------------
# Numerics of a PyTorch module.
# --------------------------------------------------------------------------


def check_numerics(module, layout: Layout) -> list[str]:
  """Differences between a torch module and the layout's numerics, in words.

  Checks every LayerNorm's eps, every GELU's approximation and every
  BatchNorm's eps; an empty list means none was found.
  """
  import torch  # pylint: disable=g-import-not-at-top
  want, problems = layout.numerics, []
  for name, m in module.named_modules():
    if isinstance(m, torch.nn.LayerNorm) and want.layer_norm_eps is not None:
      if abs(m.eps - want.layer_norm_eps) > 1e-12:
        problems.append(f"{name}: LayerNorm eps {m.eps:g}, the Flax model "
                        f"uses {want.layer_norm_eps:g}")
    elif isinstance(m, torch.nn.GELU) and want.gelu is not None:
      if m.approximate != want.gelu:
        problems.append(f"{name}: GELU(approximate={m.approximate!r}), the "
                        f"Flax model uses approximate={want.gelu!r}")
    elif (isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d,
                         torch.nn.BatchNorm3d)) and
          want.batch_norm_eps is not None):
      if abs(m.eps - want.batch_norm_eps) > 1e-12:
        problems.append(f"{name}: BatchNorm eps {m.eps:g}, the Flax model "
                        f"uses {want.batch_norm_eps:g}")
  return problems


__all__ = ["LAYOUTS", "Layout", "Numerics", "Rule", "Slot", "check_numerics",
           "describe_layouts", "from_big_vision", "get_layout"]
