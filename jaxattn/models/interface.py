"""What the trainer and the tools need to know about a model, beyond its module.

Each registered model has a ``ModelInterface`` (scenic's ``BaseModel`` in
spirit): the shape of what its train step is fed, the method that takes it,
how its outputs become a loss, which config values it cannot train with, and
how a plain ``.npz`` of weights is imported into it. The trainer, the input
pipeline, bench, inference and the converter ask the interface; none of them
tests a model's name. Most models need only the defaults; seed 000's hybrid
(cached backbone features, softmax outputs, a vit_jax backbone file)
overrides them in ``jaxattn/models/hybrid/interface.py``.

``ExplainHooks`` says which of ``jaxattn.explain``'s methods fit a model and
where they look (Grad-CAM's default layer, a CAM head, token attention).
Both live in the model's ``ModelSpec`` (``registry.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from jaxattn import losses, weights
from jaxattn.configlib import ConfigError

PyTree = Any
INPUT_IMAGES = "images"
INPUT_FEATURES = "features"


@dataclasses.dataclass(frozen=True)
class ModelInterface:
  """The defaults: a model whose ``__call__`` classifies NHWC images."""

  # The PyTorch twin is built with the image size (positional embeddings,
  # the CNNs' flatten size); see ``jaxattn.convert.commands``.
  twin_needs_image_size: bool = True
  # A model with a frozen part can train on that part's outputs computed
  # once (jaxattn/feature_cache.py): ``feature_method`` computes them from
  # images, ``cached_features_method`` classifies them. None: nothing frozen.
  feature_method: str | None = None
  cached_features_method: str | None = None

  def check(self, config: ml_collections.ConfigDict) -> None:
    """Raises ValueError for config values this model cannot train with."""
    if config.cache_backbone_features and not self.feature_method:
      raise ConfigError(
          "config.cache_backbone_features needs a frozen backbone (seed "
          f"000's model 'hybrid'); model {config.model.name!r} has none. Set "
          "--config.cache_backbone_features=False.")

  def input_kind(self, config: ml_collections.ConfigDict) -> str:
    """What ``__call__`` classifies: ``"images"`` (the pipeline decodes and
    preprocesses them; predict and explain take image files) or
    ``"features"`` (vectors the pipeline passes through)."""
    del config
    return INPUT_IMAGES

  def init_shape(self, config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """One example of what ``__call__`` (and so ``model.init``) is given."""
    return (*config.image_size, config.num_channels)

  def feature_shape(self, config: ml_collections.ConfigDict
                    ) -> tuple[int, ...] | None:
    """One example of ``feature_method``'s output (None: no features)."""
    del config
    return None

  def loss_spec(self, config: ml_collections.ConfigDict) -> losses.LossSpec:
    return losses.LossSpec.from_config(config)

  def import_npz(self, config: ml_collections.ConfigDict,
                 arrays: dict[str, np.ndarray], params: PyTree,
                 source: str) -> PyTree:
    """``params`` replaced by an ``.npz`` of '/'-joined param paths that
    covers all of them (the converter's variables.npz is read before)."""
    target = traverse_util.flatten_dict(params, sep="/")
    return traverse_util.unflatten_dict(weights.match_arrays(
        target, arrays,
        header=weights.init_from_header(config.init_from, config.model.name,
                                        source, len(arrays), len(target))),
        sep="/")


DEFAULT = ModelInterface()


# ----------------------------------------------------------------------------
# What jaxattn.explain may do with a model.
# ----------------------------------------------------------------------------


def _identity(x: jax.Array) -> jax.Array:
  return x


@dataclasses.dataclass(frozen=True)
class CamHead:
  """A head that is linear in the global average pool of one feature map.

  ``features`` matches the module whose output, after ``activation``, the
  pool averages; ``dense_chains`` lists the Dense layers from the pooled
  vector to the logits (the first chain whose layers all exist is used; a
  chain without activations in between is one linear map).
  """

  features: str
  dense_chains: tuple[tuple[str, ...], ...]
  activation: Callable[[jax.Array], jax.Array] = _identity

  def linear_map(self, params) -> tuple[jax.Array, jax.Array]:
    """(W [C, K], b [K]) with logits = mean_xy(features) @ W + b."""
    for chain in self.dense_chains:
      if all(name in params for name in chain):
        weight = params[chain[0]]["kernel"]
        bias = params[chain[0]].get("bias", jnp.zeros(weight.shape[1]))
        for name in chain[1:]:
          kernel = params[name]["kernel"]
          weight, bias = weight @ kernel, bias @ kernel
          bias = bias + params[name].get("bias", 0.0)
        return weight, bias
    raise ConfigError(f"None of the head layers {self.dense_chains} are in "
                      "the model's parameters.")


@dataclasses.dataclass(frozen=True)
class ExplainHooks:
  """Where ``jaxattn.explain`` looks in a model.

  ``gradcam_layer`` and ``attention`` are regexes over '/'-joined module
  paths: Grad-CAM's default layer is the last module (in call order) that
  matches ("" = the last module with a spatial output); ``attention``
  matches token self-attention modules with query/key children ("" = none).
  ``cam``: the head CAM reads, if the logits are linear in a global average
  pool. ``no_cam`` / ``no_attention`` say why a method does not apply.
  """

  gradcam_layer: str = ""
  cam: CamHead | None = None
  attention: str = ""
  no_cam: str = ("its logits are not a linear function of a global average "
                 "pool")
  no_attention: str = "it has no token self-attention"
