"""Seed 000: a frozen ViT-B/8 feeding a cross-scale fusion head (``hybrid``),
and the head alone on cached backbone logits (``hybrid_head``).

``model.py`` is the Flax model (``Hybrid``), composed of ``backbone.py`` (the
frozen ViT in the vit_jax layout) and ``fusion.py`` (the trainable head);
``vit_npz.py`` loads an official vit_jax / big_vision ``.npz`` into the
backbone. ``interface.py`` is what the trainer needs beyond the model
(softmax outputs, cached features, the ``.npz``), ``pytorch.py`` the PyTorch
twin (timm's ViT keys for the backbone), ``layouts.py`` the converter's
rules.
"""

from jaxattn.models import registry
from jaxattn.models.hybrid import layouts
from jaxattn.models.hybrid.backbone import IMAGENET_CLASSES, ViTBackbone
from jaxattn.models.hybrid.fusion import (REFINEMENTS, BottleneckRefinement,
                                          HybridFusionHead, SameConv1D,
                                          channel_shuffle)
from jaxattn.models.hybrid.interface import HeadInterface, HybridInterface
from jaxattn.models.hybrid.model import Hybrid
from jaxattn.models.hybrid.vit_npz import load_vit_npz, vit_params_from_arrays
from jaxattn.models.interface import ExplainHooks


def shrink_for_smoke(c) -> None:
  """A tiny backbone at 32 px, random weights (no checkpoint offline)."""
  c.image_size = (32, 32)
  c.model.update(dict(patch_size=8, hidden_dim=16, depth=1, num_heads=2,
                      mlp_dim=32))
  c.init_from = ""  # Smoke runs download nothing.
  c.pretrained_required = False


registry.register(registry.ModelSpec(
    name="hybrid", module=Hybrid, interface=HybridInterface(),
    explain=ExplainHooks(
        gradcam_layer=r"backbone/Transformer/encoderblock_\d+/LayerNorm_0",
        attention=r"backbone/Transformer/encoderblock_\d+/"
        r"MultiHeadDotProductAttention_1",
        no_cam="its heads read the backbone's class-token logits"),
    layouts=(layouts.JAXATTN_HYBRID, layouts.TIMM_HYBRID,
             layouts.VIT_JAX_HYBRID),
    torch_twin="jaxattn.models.hybrid.pytorch:Hybrid",
    shrink_for_smoke=shrink_for_smoke))
registry.register(registry.ModelSpec(
    name="hybrid_head", module=HybridFusionHead, interface=HeadInterface(),
    explain=ExplainHooks(
        no_cam="it classifies backbone logits, not images",
        no_attention="it classifies backbone logits, not images"),
    layouts=(layouts.JAXATTN_HYBRID_HEAD,),
    torch_twin="jaxattn.models.hybrid.pytorch:HybridFusionHead"))

__all__ = ["IMAGENET_CLASSES", "REFINEMENTS", "BottleneckRefinement", "Hybrid",
           "HybridFusionHead", "SameConv1D", "ViTBackbone", "channel_shuffle",
           "load_vit_npz", "vit_params_from_arrays"]
