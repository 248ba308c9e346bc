"""Seed 004: the fully-convolutional ViT (EVA-8 S10), registered as ``conv_vit``.

``model.py`` is the Flax model, ``pytorch.py`` its PyTorch twin (the seed's
module names), ``layouts.py`` the converter's rules between the two.
"""

import flax.linen as nn

from jaxattn.models import registry
from jaxattn.models.conv_vit import layouts
from jaxattn.models.conv_vit.model import (ChannelSelfAttention, ConvViT,
                                           ConvViTBlock, Embedding,
                                           FeedForward)
from jaxattn.models.interface import CamHead, ExplainHooks


def _exact_gelu(x):
  return nn.gelu(x, approximate=False)


registry.register(registry.ModelSpec(
    name="conv_vit",
    module=ConvViT,
    explain=ExplainHooks(
        gradcam_layer="norm",
        # The head is LayerNorm -> GELU -> mean pool -> Linear.
        cam=CamHead(features="norm", dense_chains=(("head",),),
                    activation=_exact_gelu),
        no_attention="its attention (seed 004) mixes channels, not "
        "positions, so it has no spatial attention map"),
    layouts=(layouts.SEED004,),
    torch_twin="jaxattn.models.conv_vit.pytorch:ConvViT",
))

__all__ = ["ChannelSelfAttention", "ConvViT", "ConvViTBlock", "Embedding",
           "FeedForward"]
