"""Seed 000: the "local / non-local fusion" hybrid on a frozen ViT-B/8.

What the authors' Keras notebook really computes (``specs/seeds.md``, "Seed
000"; it differs from their README): a frozen ImageNet ViT-B/8 produces 1000
*logits* ``L``; a small trainable CNN ("Attention Module 1", Keras ``model_1``)
turns ``L`` into 1000 features ``F1``; two identical MLP heads read
``concat([F1, L])`` and their two softmax outputs are averaged.

Three modules, so a trainer can cache the backbone's logits:

* ``ViTBackbone`` (``backbone.py``) -- a standard ViT in the vit_jax /
  big_vision parameter layout, so an official ``.npz`` loads with
  ``load_vit_npz`` (``vit_npz.py``).
* ``HybridFusionHead`` (``fusion.py``, registered ``"hybrid_head"``) --
  ``model_1`` plus the two heads, from (B, 1000) logits to ``{"model0",
  "vit", "average"}`` probabilities; the head's own seed quirks are listed
  there.
* ``Hybrid`` (here, registered ``"hybrid"``) -- ``backbone`` + ``fusion``;
  ``params["fusion"]`` has exactly ``HybridFusionHead``'s tree.

Seed quirk reproduced on purpose: CIFAR-100 / Cars: the pipeline maps images
to [-1, 1] and the model applies ``x / 127.5 - 1`` again, so the ViT sees
about -1 +- 0.008 (``Hybrid.double_normalization``, default False; those
configs turn it on).

Differences from the notebook:

* The authors resized inside the model (``Resizing(224, 224, "lanczos5")``
  after ``Rescaling``). Here the input pipeline delivers 224x224 images in
  [-1, 1]; the model never resizes.
* The notebook held three frozen copies of the hub ViT that all saw the same
  input; one shared backbone computes the same ``L``.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxattn.models.hybrid.backbone import IMAGENET_CLASSES, ViTBackbone
from jaxattn.models.hybrid.fusion import HybridFusionHead

Array = jax.Array


class Hybrid(nn.Module):
  """Frozen ViT backbone (``params["backbone"]``) + ``HybridFusionHead``
  (``params["fusion"]``).

  Takes NHWC float images that the pipeline already resized to the backbone's
  resolution (224 for B/8) and mapped to [-1, 1]; returns the head's dict of
  float32 probabilities. Load the backbone with ``load_vit_npz`` into
  ``params["backbone"]``.

  ``freeze_backbone``: the backbone runs in eval mode and its logits pass
  through ``jax.lax.stop_gradient``, so its gradients are exactly zero. Keep
  its parameters out of the optimizer too (e.g. ``optax.multi_transform``);
  weight decay would otherwise still move them.

  ``double_normalization``: apply the authors' in-model ``x / 127.5 - 1`` to
  inputs already in [-1, 1] (their CIFAR-100 / Cars runs); the ViT then sees
  about -1 +- 0.008.

  ``backbone_logits`` (use as ``model.apply(variables, images,
  method="backbone_logits")``) returns the (B, 1000) logits, for caching them
  and training ``"hybrid_head"`` alone.
  """

  num_classes: int = 10
  patch_size: int = 8
  hidden_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  freeze_backbone: bool = True
  double_normalization: bool = False
  duplicate_avg_branch: bool = True
  refinement: str = "none"
  dtype: Any = jnp.float32

  def setup(self):
    self.backbone = ViTBackbone(self.patch_size, self.hidden_dim, self.depth,
                                self.num_heads, self.mlp_dim, IMAGENET_CLASSES,
                                self.dtype)
    self.fusion = HybridFusionHead(self.num_classes, self.duplicate_avg_branch,
                                   self.refinement, self.dtype)

  def backbone_logits(self, images: Array, *, train: bool = False) -> Array:
    if self.double_normalization:
      images = images.astype(jnp.float32) / 127.5 - 1.0
    logits = self.backbone(images, train=train and not self.freeze_backbone)
    if self.freeze_backbone:
      logits = jax.lax.stop_gradient(logits)
    return logits

  def classify_backbone_logits(self, logits: Array, *, train: bool = False
                               ) -> dict[str, Array]:
    """The head on backbone logits (B, 1000) from a feature cache.

    The frozen backbone's outputs do not change during training, so the
    trainer can compute them once (``config.cache_backbone_features``) and
    feed them here in place of images: the same parameters, the same head.
    """
    return self.fusion(logits.astype(jnp.float32), train=train)

  def __call__(self, images: Array, *, train: bool = False) -> dict[str, Array]:
    """Images (B, H, W, C) -> the head's dict of probabilities."""
    return self.fusion(self.backbone_logits(images, train=train), train=train)
