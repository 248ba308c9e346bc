"""Plain-PyTorch definitions of every architecture, in checkpoint layouts.

A converted Flax checkpoint loads into these with
``load_state_dict(strict=True)``; the authors' (or torchvision's / timm's)
checkpoints load as they are. Eval-mode outputs equal the Flax models' (same
padding, GELU, epsilon and softmax-axis conventions). Inputs are NCHW.

Each twin lives beside its Flax model (``jaxattn/models/<family>/pytorch.py``,
which documents its state_dict keys) and is named in the model's
``ModelSpec.torch_twin``. ``create_torch_model(name, **kwargs)`` takes the
same keyword arguments as the Flax module registered under ``name``
(``jaxattn.models.create_model``), so one ``config.model`` builds both;
``dtype`` (and ``remat``) are accepted and ignored. Some need the input
geometry at construction, which Flax infers at init: ``image_size``
(conv_vit, vit, se_cnn/sa_cnn, hybrid) and ``in_channels``.
"""

from collections.abc import Callable

from torch import nn


def torch_model_names() -> list[str]:
  """The registered models that have a PyTorch twin."""
  from jaxattn import models  # pylint: disable=g-import-not-at-top
  return [name for name in models.known_models()
          if models.get_spec(name).torch_twin]


def torch_constructor(name: str) -> Callable[..., nn.Module]:
  """The twin's constructor; an unknown name lists the known ones."""
  from jaxattn import models  # pylint: disable=g-import-not-at-top
  if name not in torch_model_names():
    raise ValueError(f"Unknown model {name!r}. Known PyTorch models: "
                     f"{', '.join(torch_model_names())}.")
  return models.get_spec(name).load_torch_twin()


def create_torch_model(name: str, **kwargs) -> nn.Module:
  """The PyTorch twin of the model registered as ``name``, built with the
  Flax module's keyword arguments."""
  return torch_constructor(name)(**kwargs)


__all__ = ["create_torch_model", "torch_constructor", "torch_model_names"]
