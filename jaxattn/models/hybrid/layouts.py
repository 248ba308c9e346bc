"""Converter layouts of seed 000's hybrid and its fusion head
(``jaxattn.convert.rules``)."""

import dataclasses

from jaxattn import weights
from jaxattn.convert.rules import (BATCH_NORM, CONV_LAYER, DENSE_LAYER,
                                   LAYER_NORM, SUBTREE, TIMM_ATTENTION, Layout,
                                   Numerics, Rule, params)
from jaxattn.convert.tensors import COPY


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

JAXATTN_HYBRID = Layout(
    "jaxattn",
    "jaxattn.torch_models.Hybrid (seed 000 is Keras, no PyTorch original): "
    "backbone.* with timm's VisionTransformer keys, fusion.* with the Flax "
    "module names",
    _vit_backbone("backbone", "backbone") + _fusion_head("fusion", "fusion"),
    _HYBRID_NUMERICS, resize=(_POSEMB_RESIZE,))
TIMM_HYBRID = Layout(
    "timm",
    "timm's VisionTransformer (e.g. vit_base_patch8_224.augreg_in21k_ft_in1k):"
    " the hybrid's backbone alone with timm's top-level keys; the fusion head "
    "is left out on export and stays at its initialisation on import",
    _vit_backbone("backbone", ""), _VIT_NUMERICS, partial=True,
    resize=(_POSEMB_RESIZE,))
VIT_JAX_HYBRID = Layout(
    "vit_jax",
    "a vit_jax / big_vision .npz (the AugReg ViT-B/8 the authors froze): the "
    "hybrid's backbone alone, '/'-joined vit_jax parameter names; the fusion "
    "head stays at its initialisation",
    (Rule("backbone", "", SUBTREE),), _VIT_NUMERICS, partial=True,
    resize=((r"Transformer/posembed_input/pos_embedding",
             weights.resize_posemb_hook),),
    separator="/", file_format="npz")
JAXATTN_HYBRID_HEAD = Layout(
    "jaxattn",
    "jaxattn.torch_models.HybridFusionHead: the Flax module names",
    _fusion_head("", ""), dataclasses.replace(_HYBRID_NUMERICS, gelu=None,
                                              layer_norm_eps=None))


# model name -> {layout name: layout}; the first is the default.
