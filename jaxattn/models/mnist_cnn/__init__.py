"""Seed 003: the MNIST CNN with SE or self-attention blocks (``se_cnn``,
``sa_cnn``).

``model.py`` is the Flax model, ``pytorch.py`` its PyTorch twin (the seed's
``nn.Sequential`` indices), ``layouts.py`` the converter's rules.
"""

from jaxattn.models import registry
from jaxattn.models.interface import ExplainHooks
from jaxattn.models.mnist_cnn import layouts
from jaxattn.models.mnist_cnn.model import (FROZEN_PARAMS_REGEX, SACNN, SECNN,
                                            AttentionCNN)

_NO_CAM = "it flattens its last map into Dense layers instead of pooling it"

registry.register(registry.ModelSpec(
    name="se_cnn", module=SECNN,
    explain=ExplainHooks(gradcam_layer="se_11", no_cam=_NO_CAM),
    layouts=(layouts.SEED003,),
    torch_twin="jaxattn.models.mnist_cnn.pytorch:se_cnn"))
registry.register(registry.ModelSpec(
    name="sa_cnn", module=SACNN,
    explain=ExplainHooks(gradcam_layer="sa_11", no_cam=_NO_CAM),
    layouts=(layouts.SEED003,),
    torch_twin="jaxattn.models.mnist_cnn.pytorch:sa_cnn"))

__all__ = ["FROZEN_PARAMS_REGEX", "AttentionCNN", "SACNN", "SECNN"]
