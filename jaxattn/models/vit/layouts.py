"""Converter layouts of seed 002's ViT (``jaxattn.convert.rules``)."""

from jaxattn.convert.rules import (CONV_LAYER, DENSE_LAYER, LAYER_NORM,
                                   TORCH_MHA, Layout, Numerics, Rule, params)
from jaxattn.convert.tensors import TOKENS_LAST_TO_FIRST


SEED002 = Layout(
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
