"""Model zoo: one folder per architecture family, each registering its
``ModelSpec``s (``registry.py``) in its ``__init__.py``."""

from jaxattn.models import conv_vit  # noqa: F401  (registers "conv_vit")
from jaxattn.models import hybrid  # noqa: F401  (registers "hybrid", "hybrid_head")
from jaxattn.models import mnist_cnn  # noqa: F401  (registers "se_cnn", "sa_cnn")
from jaxattn.models import resnet  # noqa: F401  (registers "slresnet", "gsop_resnet")
from jaxattn.models import vit  # noqa: F401  (registers "vit")
from jaxattn.models.interface import CamHead, ExplainHooks, ModelInterface
from jaxattn.models.registry import (ModelSpec, create_model, get_interface,
                                    get_model_class, get_spec, known_models,
                                    register)

__all__ = ["CamHead", "ExplainHooks", "ModelInterface", "ModelSpec",
           "create_model", "get_interface", "get_model_class", "get_spec",
           "known_models", "register"]
