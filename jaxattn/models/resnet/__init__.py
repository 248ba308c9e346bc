"""Seed 001's SL-ResNet (``slresnet``) and GSoP-Net (``gsop_resnet``).

``model.py`` is the Flax model, ``pytorch.py`` its PyTorch twin (torchvision's
ResNet keys plus the attention modules), ``layouts.py`` the converter's rules
(the authors' layouts and torchvision's backbone).
"""

from jaxattn.models import registry
from jaxattn.models.interface import CamHead, ExplainHooks, ModelInterface
from jaxattn.models.resnet import layouts
from jaxattn.models.resnet.model import (ATTENTION_IN, ATTENTIONS, BLOCKS,
                                         HEADS, BasicBlock, Bottleneck,
                                         GSoPResNet, ResNet, SLayer,
                                         SLResNet, max_pool_3x3_s2)


def shrink_for_smoke(c) -> None:
  """One block per stage, 8 channels in the stem, the dataset's classes."""
  c.image_size = (32, 32)
  c.model.update(dict(stage_sizes=(1, 1, 1, 1), width=8))
  c.num_classes = 0
  c.init_from = ""  # ImageNet weights do not fit; smoke runs download nothing.


# The twin takes no image size: its head follows a global average pool.
_INTERFACE = ModelInterface(twin_needs_image_size=False)
# "fc": torchvision's head; fc_0/2/4: seed 001's Linear-Dropout-Linear-
# Dropout-Linear, linear at evaluation (no activations, dropout off).
_EXPLAIN = ExplainHooks(
    gradcam_layer=r"layer4_\d+",
    cam=CamHead(features=r"layer4_\d+",
                dense_chains=(("fc",), ("fc_0", "fc_2", "fc_4"))))

registry.register(registry.ModelSpec(
    name="slresnet", module=SLResNet, interface=_INTERFACE, explain=_EXPLAIN,
    layouts=(layouts.SEED001, layouts.TORCHVISION),
    torch_twin="jaxattn.models.resnet.pytorch:slresnet",
    shrink_for_smoke=shrink_for_smoke))
registry.register(registry.ModelSpec(
    name="gsop_resnet", module=GSoPResNet, interface=_INTERFACE,
    explain=_EXPLAIN, layouts=(layouts.GSOPNET, layouts.TORCHVISION),
    torch_twin="jaxattn.models.resnet.pytorch:gsop_resnet",
    shrink_for_smoke=shrink_for_smoke))

__all__ = ["ATTENTIONS", "ATTENTION_IN", "BLOCKS", "HEADS", "BasicBlock",
           "Bottleneck", "GSoPResNet", "ResNet", "SLResNet", "SLayer",
           "max_pool_3x3_s2"]
