"""Models are registered under explicit string keys (as in scenic).

A config names its architecture with ``config.model.name``; the remaining
``config.model`` fields are passed to the module's constructor. An unknown
name raises an error that lists every known one. Each name also has a
``ModelInterface`` (``jaxattn/models/interface.py``): what the trainer needs
to know about the model beyond its module.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn

from jaxattn.configlib import ConfigError
from jaxattn.models.interface import DEFAULT, ModelInterface

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_INTERFACES: dict[str, ModelInterface] = {}


def register(name: str, interface: ModelInterface = DEFAULT):
  """Class decorator: make a linen module constructible as ``name``."""

  def wrap(module_cls):
    if name in _MODELS:
      raise ValueError(f"Model name {name!r} is registered twice.")
    _MODELS[name] = module_cls
    _INTERFACES[name] = interface
    return module_cls

  return wrap


def known_models() -> list[str]:
  return sorted(_MODELS)


def get_model_class(name: str) -> Callable[..., nn.Module]:
  try:
    return _MODELS[name]
  except KeyError:
    raise ConfigError(
        f"Unknown model {name!r}. Known models: {', '.join(known_models())}. "
        "Set config.model.name to one of them.") from None


def get_interface(name: str) -> ModelInterface:
  get_model_class(name)  # The error for an unknown name.
  return _INTERFACES[name]


def create_model(name: str, **kwargs: Any) -> nn.Module:
  """Instantiates the registered module, reporting bad keyword arguments."""
  module_cls = get_model_class(name)
  fields = getattr(module_cls, "__dataclass_fields__", {})
  unknown = sorted(set(kwargs) - set(fields) - {"parent", "name"})
  if unknown:
    valid = sorted(k for k in fields if k not in ("parent", "name"))
    raise ConfigError(
        f"Model {name!r} has no option(s) {unknown}. Valid options: {valid}.")
  return module_cls(**kwargs)
