"""What the trainer needs to know about seed 000's two registered models."""

import dataclasses

import ml_collections

from jaxattn import losses
from jaxattn.configlib import ConfigError
from jaxattn.models.hybrid.backbone import IMAGENET_CLASSES
from jaxattn.models.hybrid.vit_npz import vit_params_from_arrays
from jaxattn.models.interface import INPUT_FEATURES, ModelInterface


def _softmax_outputs(config: ml_collections.ConfigDict) -> losses.LossSpec:
  # Both heads end in a softmax: the loss takes the clipped log of their
  # probabilities, as Keras' categorical cross-entropy does.
  return dataclasses.replace(losses.LossSpec.from_config(config),
                             probabilities=True)


@dataclasses.dataclass(frozen=True)
class HeadInterface(ModelInterface):
  """``hybrid_head``: classifies backbone logits (a feature cache), not images."""

  twin_needs_image_size: bool = False

  def input_kind(self, config):
    return INPUT_FEATURES

  def init_shape(self, config):
    return (IMAGENET_CLASSES,)

  def loss_spec(self, config):
    return _softmax_outputs(config)


@dataclasses.dataclass(frozen=True)
class HybridInterface(ModelInterface):
  """``hybrid``: images; with ``config.cache_backbone_features`` the frozen
  backbone's logits are computed once and the head trains on them."""

  feature_method: str = "backbone_logits"
  cached_features_method: str = "classify_backbone_logits"

  def check(self, config):
    if not config.cache_backbone_features:
      return
    if not config.model.get("freeze_backbone", True):
      raise ConfigError(
          "config.cache_backbone_features needs a frozen backbone, but "
          "config.model.freeze_backbone=False; freeze it or set "
          "--config.cache_backbone_features=False.")
    aug = config.augment
    if (aug.random_resized_crop or aug.flip or aug.rand_augment_ops or
        any(aug.color_jitter) or aug.random_erasing):
      raise ConfigError(
          "config.cache_backbone_features caches the backbone's outputs of "
          "unaugmented images, but this config augments them (config.augment)"
          ": turn the augmentations off or set "
          "--config.cache_backbone_features=False.")

  def feature_shape(self, config):
    return (IMAGENET_CLASSES,)

  def loss_spec(self, config):
    return _softmax_outputs(config)

  def import_npz(self, config, arrays, params, source):
    """A vit_jax / big_vision ``.npz`` (the authors' AugReg ViT-B/8) into the
    backbone; the fusion head keeps its initialisation."""
    del config
    params = dict(params)
    params["backbone"] = vit_params_from_arrays(arrays, params["backbone"],
                                                source=source)
    return params
