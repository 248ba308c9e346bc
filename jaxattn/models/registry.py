"""Models are registered under explicit string keys (as in scenic).

A config names its architecture with ``config.model.name``; the remaining
``config.model`` fields are passed to the module's constructor. An unknown
name raises an error that lists every known one.

Everything the project knows about a registered model is in its
``ModelSpec``, written once in the family's folder (``jaxattn/models/<family>/
__init__.py``): the module, what the trainer needs beyond it
(``ModelInterface``), where ``jaxattn.explain`` looks (``ExplainHooks``), the
converter's PyTorch / .npz layouts, the PyTorch twin and the smoke-test
shrink. explain, convert, torch_models and the configs look the spec up; none
of them keeps a table keyed by model name.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import ml_collections

from jaxattn.configlib import ConfigError
from jaxattn.models.interface import DEFAULT, ExplainHooks, ModelInterface

if TYPE_CHECKING:
  from jaxattn.convert.rules import Layout


def _no_shrink(config: ml_collections.ConfigDict) -> None:
  del config


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """One registered model.

  ``layouts``: the converter's rule tables (``jaxattn.convert.rules.Layout``),
  the first the default. ``torch_twin``: ``"package.module:callable"`` of the
  plain-PyTorch definition taking the same keyword arguments as ``module``;
  imported only when asked for, since PyTorch is an optional dependency.
  ``shrink_for_smoke``: what the family changes beyond
  ``recipes.shrink_for_smoke``'s common part (a tiny variant that runs in
  seconds on a CPU and downloads nothing).
  """

  name: str
  module: Callable[..., nn.Module]
  interface: ModelInterface = DEFAULT
  explain: ExplainHooks = ExplainHooks()
  layouts: tuple[Layout, ...] = ()
  torch_twin: str = ""
  shrink_for_smoke: Callable[[ml_collections.ConfigDict], None] = _no_shrink

  def layout_names(self) -> list[str]:
    return [layout.name for layout in self.layouts]

  def load_torch_twin(self) -> Callable[..., Any]:
    """The PyTorch twin's constructor (imports PyTorch)."""
    if not self.torch_twin:
      raise ConfigError(f"Model {self.name!r} has no PyTorch twin.")
    module_name, attr = self.torch_twin.split(":")
    return getattr(importlib.import_module(module_name), attr)


_SPECS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
  """Adds ``spec`` under ``spec.name``; a name may be registered once."""
  if spec.name in _SPECS:
    raise ValueError(f"Model name {spec.name!r} is registered twice.")
  names = spec.layout_names()
  if len(set(names)) != len(names):
    raise ValueError(f"Model {spec.name!r} has two layouts of one name: "
                     f"{names}.")
  _SPECS[spec.name] = spec
  return spec


def known_models() -> list[str]:
  return sorted(_SPECS)


def get_spec(name: str) -> ModelSpec:
  try:
    return _SPECS[name]
  except KeyError:
    raise ConfigError(
        f"Unknown model {name!r}. Known models: {', '.join(known_models())}. "
        "Set config.model.name to one of them.") from None


def get_model_class(name: str) -> Callable[..., nn.Module]:
  return get_spec(name).module


def get_interface(name: str) -> ModelInterface:
  return get_spec(name).interface


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
