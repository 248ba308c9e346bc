"""Flax layers that start and compute as PyTorch's do, for ported models.

The seeds were trained in PyTorch; matching its defaults keeps their recipes'
starting points and lets converted checkpoints give the same logits:

* ``torch.nn.Linear`` / ``Conv2d`` initialise weights with
  ``kaiming_uniform_(a=sqrt(5))``, which is exactly U(+-1/sqrt(fan_in)), and
  biases with the same bound (Flax defaults: lecun_normal and zeros).
* ``torch.nn.LayerNorm`` uses eps 1e-5 and a two-pass variance (Flax: 1e-6
  and a fast one-pass variance).
* ``torch.nn.BatchNorm`` uses momentum 0.1 for the running statistics (Flax
  counts the other way: 0.9) and eps 1e-5.

It also holds stochastic depth (``drop_path_*``), which the ViT families
share: timm's ``DropPath`` with its linearly increasing per-block rates.
"""

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxattn.configlib import ConfigError
from jaxattn.models import kernels

Array = jax.Array

_kaiming_uniform_a_sqrt5 = nn.initializers.variance_scaling(
    1 / 3, "fan_in", "uniform")


def kernel_init(key, shape, dtype=jnp.float32) -> Array:
  """PyTorch's default Conv2d/Linear weight init, U(+-1/sqrt(fan_in)).

  Zero-size kernels are allowed (seed 003's ``Linear(12, 0)``): PyTorch skips
  initialising an empty tensor, and there is nothing to draw.
  """
  if math.prod(shape) == 0:
    return jnp.zeros(shape, dtype)
  return _kaiming_uniform_a_sqrt5(key, shape, dtype)


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


class Linear(nn.Module):
  """``nn.Dense`` (same parameters, init hooks and outputs), computed by
  ``kernels.dense`` (under the CPU kernels, a faster weight gradient).

  ``bias_init`` receives the fan-in and returns the initializer (PyTorch's
  default: ``bias_init``); kernels are [fan_in, features], float32.
  """

  features: int
  dtype: Any = jnp.float32
  kernel_init: Callable[..., Array] = kernel_init
  bias_init: Callable[[int], nn.initializers.Initializer] = bias_init
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    fan_in = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (fan_in, self.features),
                        jnp.float32)
    bias = self.param("bias", self.bias_init(fan_in), (self.features,),
                      jnp.float32) if self.use_bias else None
    return kernels.dense(x.astype(self.dtype), kernel, bias)


def zeros_bias(fan_in: int) -> nn.initializers.Initializer:
  """A ``Linear.bias_init`` for zero biases (``nn.MultiheadAttention``'s)."""
  del fan_in
  return nn.initializers.zeros


class Conv2d(nn.Module):
  """``nn.Conv`` (same parameters, init and outputs) on NHWC maps, computed
  by ``kernels.conv2d`` (``lax.conv_general_dilated``; under the CPU kernels
  strided convolutions run as stride-1 ones over space-to-depth blocks).

  ``padding`` is explicit ((top, bottom), (left, right)); groups are 1.
  """

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
  use_bias: bool = True
  dtype: Any = jnp.float32
  kernel_init: Callable[..., Array] = kernel_init
  bias_init: Callable[..., Array] = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", self.kernel_init,
                        (*self.kernel_size, x.shape[-1], self.features),
                        jnp.float32)
    y = kernels.conv2d(x.astype(self.dtype), kernel.astype(self.dtype),
                        self.strides, self.padding)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


def conv(features: int, kernel_size: tuple[int, int], fan_in: int, name: str,
         dtype: Any, *, strides: tuple[int, int] = (1, 1),
         padding: Any = "VALID", use_bias: bool = True,
         feature_group_count: int = 1,
         kernel_init: Callable[..., Array] = kernel_init) -> nn.Module:
  """``torch.nn.Conv2d`` on NHWC maps; ``fan_in = kh * kw * in / groups``.

  ``padding`` takes explicit pairs (``((2, 2), (2, 2))`` for PyTorch's
  ``padding=2``); "VALID" is PyTorch's ``padding=0``. Flax's "SAME" is not
  PyTorch's padding for strided convolutions, hence no default to it.
  Ungrouped convolutions are :class:`Conv2d` (``nn.Conv``'s parameters).
  """
  bias = bias_init(fan_in) if use_bias else nn.initializers.zeros
  if feature_group_count == 1:
    pairs = ((0, 0), (0, 0)) if padding == "VALID" else tuple(
        tuple(p) for p in padding)
    return Conv2d(features, tuple(kernel_size), tuple(strides), pairs,
                  use_bias=use_bias, dtype=dtype, kernel_init=kernel_init,
                  bias_init=bias, name=name)
  return nn.Conv(features, kernel_size, strides=strides, padding=padding,
                 use_bias=use_bias, feature_group_count=feature_group_count,
                 dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init,
                 bias_init=bias, name=name)


class BatchNorm(nn.Module):
  """``nn.BatchNorm`` over all axes but the last, with its variables
  (``params`` scale/bias, ``batch_stats`` mean/var), init, running-average
  update and outputs; training mode runs ``kernels.batch_norm`` (under the
  CPU kernels, statistics and gradients XLA:CPU computes faster).
  """

  use_running_average: bool = False
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = (x.shape[-1],)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features,
                            jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, features,
                           jnp.float32)
    scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
    if self.use_running_average:  # nn.BatchNorm's own expression.
      y = (x - ra_mean.value) * (jax.lax.rsqrt(ra_var.value + self.epsilon) *
                                 scale) + bias
      return y.astype(self.dtype)
    y, mean, var = kernels.batch_norm(x, scale, bias, self.epsilon)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y.astype(self.dtype)


def batch_norm(train: bool, name: str, dtype: Any) -> BatchNorm:
  """``torch.nn.BatchNorm{1,2}d`` (momentum 0.1 == Flax 0.9, eps 1e-5)."""
  return BatchNorm(use_running_average=not train, momentum=0.9,
                   epsilon=1e-5, dtype=dtype, name=name)


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
    raise ConfigError(
        f"Image size {height}x{width} is not divisible by patch_size="
        f"{patch_size}; the patch convolution would silently drop the "
        f"remainder. Resize or crop the images to a multiple of {patch_size} "
        f"(e.g. {height // patch_size * patch_size}x"
        f"{width // patch_size * patch_size}), or set model.patch_size to a "
        f"divisor of both sides.")


# --------------------------------------------------------------------------
# Stochastic depth (DeiT / timm "drop path"), shared by the ViT families.
# --------------------------------------------------------------------------


def drop_path_rates(drop_path_rate: float, depth: int) -> tuple[float, ...]:
  """timm's per-block rates ``linspace(0, drop_path_rate, depth)``: block i
  of ``depth`` drops with ``drop_path_rate * i / (depth - 1)`` (the first
  block never, the last with ``drop_path_rate``; one block: 0)."""
  if not 0.0 <= drop_path_rate <= 1.0:
    raise ConfigError(f"drop_path_rate={drop_path_rate} must be in [0, 1] "
                      "(the last block's probability of skipping a residual "
                      "branch).")
  if depth <= 1:
    return (0.0,) * depth
  return tuple(drop_path_rate * i / (depth - 1) for i in range(depth))


def drop_path_scales(module: nn.Module, batch: int, drop_path_rate: float,
                     depth: int, *, train: bool, branches: int = 2
                     ) -> list[Array | None]:
  """Per block, the (batch, branches) float32 multipliers of its residual
  branches, or None where nothing is dropped.

  Each example's branch is kept with probability ``1 - rate`` (the block's
  rate, ``drop_path_rates``) and then scaled by ``1 / (1 - rate)``, else
  multiplied by 0: timm's ``drop_path(x, rate, training, scale_by_keep=True)``,
  one independent draw per branch and example. All draws come from one key
  of ``module``'s ``"dropout"`` RNG stream, for the whole batch at once, so a
  model that computes its blocks in chunks of the batch slices these arrays
  with its inputs and gets the same masks as an unchunked run. Outside
  training, at rate 0 and for rate-0 blocks (the first) the list holds None,
  no key is drawn and the computation is the model's without stochastic
  depth.
  """
  rates = drop_path_rates(drop_path_rate, depth)
  if not train or not drop_path_rate:
    return [None] * depth
  keep = jnp.asarray([1.0 - r for r in rates], jnp.float32)
  inv_keep = jnp.asarray([1.0 / (1.0 - r) if r < 1.0 else 0.0 for r in rates],
                         jnp.float32)
  uniform = jax.random.uniform(module.make_rng("dropout"),
                               (batch, depth, branches), jnp.float32)
  scales = jnp.where(uniform < keep[:, None], inv_keep[:, None], 0.0)
  return [None if rate == 0.0 else scales[:, i] for i, rate in
          enumerate(rates)]


def drop_path(branch: Array, scale: Array | None) -> Array:
  """A residual branch times its per-example multiplier (``scale``, shape
  (batch,), from ``drop_path_scales``); None: the branch as it is."""
  if scale is None:
    return branch
  scale = scale.reshape(scale.shape[0], *(1,) * (branch.ndim - 1))
  return (branch.astype(jnp.float32) * scale).astype(branch.dtype)
