"""Flax module paths <-> PyTorch keys: the vocabulary of the rule tables.

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
named rule table for one model (``layouts(model)[name]``, the first is the
default; each family writes its own in ``jaxattn/models/<family>/layouts.py``
and registers them in its ``ModelSpec``): the seed authors' own PyTorch
modules for seeds 001-004, the project's PyTorch module for seed 000 (Keras
has no PyTorch original), and the standard libraries' layouts where an
architecture matches one (torchvision ResNet, timm VisionTransformer,
vit_jax). A *partial* layout covers part of
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
    CONV, COPY, DENSE, DENSE_AS_CONV1X1, HEADS_TO_DENSE, NUM_BATCHES_TRACKED, QKV_BIAS, QKV_KERNEL, TensorRule)
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


# The layouts themselves live with their models (jaxattn/models/<family>/
# layouts.py) and are registered in each model's ModelSpec.


def layouts(model: str) -> dict[str, Layout]:
  """``{layout name: layout}`` of a registered model, the default first."""
  from jaxattn import models  # pylint: disable=g-import-not-at-top
  if model not in models.known_models():
    raise UnknownLayoutError(
        f"No conversion rules for model {model!r}; models with rules: "
        f"{', '.join(models_with_layouts())}.")
  return {layout.name: layout for layout in models.get_spec(model).layouts}


def models_with_layouts() -> list[str]:
  from jaxattn import models  # pylint: disable=g-import-not-at-top
  return [name for name in models.known_models()
          if models.get_spec(name).layouts]


class UnknownLayoutError(BadInputError, ValueError):
  """A layout name the model has no rules for; the message lists them."""


def describe_layouts(model: str) -> str:
  names = list(layouts(model))
  return ", ".join(f"{n} (default)" if i == 0 else n
                   for i, n in enumerate(names))


def get_layout(model: str, name: str | None = None) -> Layout:
  """The model's layout ``name`` (its default for None), or a clear error."""
  by_name = layouts(model)
  if not by_name:
    raise UnknownLayoutError(
        f"No conversion rules for model {model!r}; models with rules: "
        f"{', '.join(models_with_layouts())}.")
  if name in (None, "", "default"):
    return next(iter(by_name.values()))
  if name not in by_name:
    raise UnknownLayoutError(
        f"Unknown layout {name!r} for model {model!r}. Valid layouts: "
        f"{describe_layouts(model)}.")
  return by_name[name]


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


__all__ = ["Layout", "Numerics", "Rule", "Slot", "check_numerics",
           "describe_layouts", "from_big_vision", "get_layout", "layouts",
           "models_with_layouts"]
