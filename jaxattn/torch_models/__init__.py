"""Plain-PyTorch definitions of every architecture, in checkpoint layouts.

A converted Flax checkpoint loads into these with
``load_state_dict(strict=True)``; the authors' (or torchvision's / timm's)
checkpoints load as they are. Eval-mode outputs equal the Flax models' (same
padding, GELU, epsilon and softmax-axis conventions). Inputs are NCHW.

``TORCH_MODELS[name](**kwargs)`` takes the same keyword arguments as the
Flax module registered under ``name`` (``jaxattn.models.create_model``), so
one ``config.model`` builds both; ``dtype`` (and ``remat``) are accepted and
ignored. Some need the input geometry at construction, which Flax infers at
init: ``image_size`` (conv_vit, vit, se_cnn/sa_cnn, hybrid) and
``in_channels``.

One file per family, each documenting its state_dict keys:
``conv_vit`` (seed 004), ``vit`` (seed 002), ``mnist_cnn`` (seed 003:
``se_cnn``, ``sa_cnn``), ``resnet`` (seed 001 ``slresnet``, and
``gsop_resnet``), ``hybrid`` (seed 000: ``hybrid``, ``hybrid_head``).
"""

from collections.abc import Callable

from torch import nn

from jaxattn.torch_models.conv_vit import ConvViT
from jaxattn.torch_models.hybrid import Hybrid, HybridFusionHead
from jaxattn.torch_models.mnist_cnn import sa_cnn, se_cnn
from jaxattn.torch_models.resnet import gsop_resnet, slresnet
from jaxattn.torch_models.vit import ViT

TORCH_MODELS: dict[str, Callable[..., nn.Module]] = {
    "conv_vit": ConvViT,
    "vit": ViT,
    "se_cnn": se_cnn,
    "sa_cnn": sa_cnn,
    "slresnet": slresnet,
    "gsop_resnet": gsop_resnet,
    "hybrid": Hybrid,
    "hybrid_head": HybridFusionHead,
}


def create_torch_model(name: str, **kwargs) -> nn.Module:
  """``TORCH_MODELS[name](**kwargs)``; an unknown name lists the known ones."""
  try:
    constructor = TORCH_MODELS[name]
  except KeyError:
    raise ValueError(f"Unknown model {name!r}. Known PyTorch models: "
                     f"{', '.join(sorted(TORCH_MODELS))}.") from None
  return constructor(**kwargs)


__all__ = ["TORCH_MODELS", "create_torch_model"]
