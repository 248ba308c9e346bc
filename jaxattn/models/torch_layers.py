"""Layers that start and normalise as PyTorch's do, for models ported from it.

The seeds were trained in PyTorch; matching its defaults keeps their recipes'
starting points and lets converted checkpoints give the same logits:

* ``torch.nn.Linear`` / ``Conv2d`` initialise weights with
  ``kaiming_uniform_(a=sqrt(5))``, which is exactly U(+-1/sqrt(fan_in)), and
  biases with the same bound (Flax defaults: lecun_normal and zeros).
* ``torch.nn.LayerNorm`` uses eps 1e-5 and a two-pass variance (Flax: 1e-6
  and a fast one-pass variance).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def bias_init(fan_in: int) -> nn.initializers.Initializer:
  """PyTorch's default bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def linear(features: int, fan_in: int, name: str, dtype: Any) -> nn.Dense:
  """``torch.nn.Linear`` (or a 1x1 ``Conv2d`` on NHWC maps) with its init."""
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=kernel_init, bias_init=bias_init(fan_in),
                  name=name)


def layer_norm(name: str, dtype: Any) -> nn.LayerNorm:
  """``torch.nn.LayerNorm``; statistics are reduced in float32 under bf16."""
  return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=dtype,
                      param_dtype=jnp.float32, name=name)


def check_images(images: Array, patch_size: int) -> None:
  """NHWC input whose sides the patch size divides, or a clear error."""
  if images.ndim != 4:
    raise ValueError(
        f"Expected images of shape (batch, height, width, channels) (NHWC), "
        f"got shape {tuple(images.shape)}.")
  height, width = images.shape[1:3]
  if height % patch_size or width % patch_size:
    raise ValueError(
        f"Image size {height}x{width} is not divisible by patch_size="
        f"{patch_size}; the patch convolution would silently drop the "
        f"remainder. Resize or crop the images to a multiple of {patch_size} "
        f"(e.g. {height // patch_size * patch_size}x"
        f"{width // patch_size * patch_size}), or set model.patch_size to a "
        f"divisor of both sides.")
