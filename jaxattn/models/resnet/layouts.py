"""Converter layouts of the ResNets: seed 001's SL-ResNet, GSoP-Net, torchvision
(``jaxattn.convert.rules``)."""

from jaxattn.convert.rules import (BATCH_NORM, CONV_LAYER, DENSE_LAYER,
                                   Layout, Numerics, Rule)


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

SEED001 = Layout(
    "seed001",
    "seed 001's SL-ResNet: torchvision ResNet keys plus layerS.B.sl.fc.weight "
    "and the fc.0/2/4 head (fc for ResNet-34 or head='linear')",
    _RESNET_BACKBONE + _RESNET_ATTENTION + _RESNET_HEAD, _RESNET_NUMERICS)
GSOPNET = Layout(
    "gsopnet",
    "GSoP-Net's official ResNet: torchvision keys plus the GSoP tensors "
    "(conv_for_DR, bn_for_DR, row_bn, row_conv_group, fc_adapt_channels) "
    "directly under layerS.B, and fc",
    _RESNET_BACKBONE + _RESNET_ATTENTION + _RESNET_HEAD, _RESNET_NUMERICS)
TORCHVISION = Layout(
    "torchvision",
    "torchvision's ResNet backbone keys only (conv1, bn1, layerS.B.*): the "
    "attention modules and the head are left out on export and stay at "
    "their initialisation on import (torchvision's ImageNet fc is ignored), "
    "as the seed 001 authors loaded resnet50(pretrained=True)",
    _RESNET_BACKBONE, _RESNET_NUMERICS, partial=True,
    ignore_on_import=(r"fc\.(weight|bias)",))
