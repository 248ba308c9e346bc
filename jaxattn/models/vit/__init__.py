"""Seed 002: the ViT trained from scratch, registered as ``vit``.

``model.py`` is the Flax model (its encoder block is
``jaxattn.models.transformer.Seed002EncoderBlock``), ``pytorch.py`` its
PyTorch twin (the seed's ``AttentionModel`` names), ``layouts.py`` the
converter's rules.
"""

from jaxattn.models import registry
from jaxattn.models.interface import ExplainHooks
from jaxattn.models.vit import layouts
from jaxattn.models.vit.model import PatchEmbedding, ViT

registry.register(registry.ModelSpec(
    name="vit",
    module=ViT,
    explain=ExplainHooks(
        # The last block's LayerNorm: its output feeds the attention, so every
        # token gets a gradient (the block's own output reaches the head only
        # through the class token).
        gradcam_layer=r"transformer_encoder_\d+/layer_norm",
        attention=r"transformer_encoder_\d+/self_attention",
        no_cam="it classifies from the class token, not a global average "
        "pool"),
    layouts=(layouts.SEED002,),
    torch_twin="jaxattn.models.vit.pytorch:ViT",
))

__all__ = ["PatchEmbedding", "ViT"]
