"""Converter layouts of seed 003's MNIST CNNs (``jaxattn.convert.rules``)."""

from jaxattn.convert.rules import (BATCH_NORM, CONV_LAYER, DENSE_LAYER,
                                   Layout, Numerics, Rule, params)
from jaxattn.convert.tensors import COPY


SEED003 = Layout(
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
