"""The input's last stages, run inside the jitted steps: uint8 -> model inputs.

The tf.data pipelines deliver images as uint8 [B, H, W, C] at
``config.image_size`` (a quarter of the bytes of float32 to copy to the
device), and the steps finish them here, on the accelerator:

* standardisation, ``(x / 255 - pixel_mean) / pixel_std``, the float32 ops
  the host pipeline ran before, in the same order;
* RandomErasing, which torchvision applies to the normalised tensor: its
  per-image boxes are still drawn on the host, with every other augmentation
  parameter (``pipeline.sample_train_augmentation``), and arrive as the
  batch's int32 [B, 4] ``"erase"`` (top, left, height, width; 0 x 0 leaves
  an image alone); the box is filled with 0, as ``augment.erasing_batch``
  does.

The dtype says what a batch holds: uint8 is raw pixels, to be prepared here;
anything else is already the model's input (images standardised on the host
by ``jaxattn.inference.read_images`` or the float path of the pipelines,
synthetic batches, seed 000's cached backbone features) and passes through
unchanged. Needs only JAX.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

Batch = dict[str, Any]
ERASE_KEY = "erase"


def standardize(images: jax.Array, pixel_mean: Sequence[float],
                pixel_std: Sequence[float]) -> jax.Array:
  """uint8 [..., C] -> float32 ``(x / 255 - mean) / std`` (one value or one
  per channel); float inputs are returned as they are."""
  if images.dtype != jnp.uint8:
    return images
  mean = jnp.asarray(pixel_mean, jnp.float32)
  std = jnp.asarray(pixel_std, jnp.float32)
  return (images.astype(jnp.float32) / 255.0 - mean) / std


def erase(images: jax.Array, boxes: jax.Array, value: float = 0.0
          ) -> jax.Array:
  """Fills each image's box (int32 [B, 4]: top, left, height, width) with
  ``value``; ``augment.erasing_batch``'s scalar fill, in JAX."""
  top, left, height, width = (boxes[:, i, None, None, None] for i in range(4))
  rows = jnp.arange(images.shape[1])[None, :, None, None]
  cols = jnp.arange(images.shape[2])[None, None, :, None]
  inside = ((rows >= top) & (rows < top + height) & (cols >= left) &
            (cols < left + width))
  return jnp.where(inside, jnp.asarray(value, images.dtype), images)


def prepare_images(images: jax.Array, *, pixel_mean: Sequence[float],
                   pixel_std: Sequence[float],
                   erase_boxes: jax.Array | None = None) -> jax.Array:
  """The model's inputs from a batch's images (see the module doc)."""
  if images.dtype != jnp.uint8:
    return images
  images = standardize(images, pixel_mean, pixel_std)
  if erase_boxes is not None:
    images = erase(images, erase_boxes)
  return images


def prepare_batch(batch: Batch, *, pixel_mean: Sequence[float],
                  pixel_std: Sequence[float]) -> Batch:
  """``batch`` with its ``"image"`` prepared and its ``"erase"`` boxes used
  up (the steps' first stage)."""
  batch = dict(batch)
  boxes = batch.pop(ERASE_KEY, None)
  batch["image"] = prepare_images(batch["image"], pixel_mean=pixel_mean,
                                  pixel_std=pixel_std, erase_boxes=boxes)
  return batch
