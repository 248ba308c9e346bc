"""Converter layouts of seed 004's conv-ViT (``jaxattn.convert.rules``)."""

from jaxattn.convert.rules import (CONV1X1_LAYER, CONV_LAYER, DENSE_LAYER,
                                   LAYER_NORM, Layout, Numerics, Rule, params)
from jaxattn.convert.tensors import MAP_LAST_TO_FIRST


SEED004 = Layout(
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
