"""Seed 000's trainable fusion head: Attention Module 1 plus the two MLP heads.

``HybridFusionHead`` (registered ``"hybrid_head"``) is the authors' Keras
``model_1`` ("Attention Module 1") and their ``model0`` / ``vit`` heads: from
the backbone's (B, 1000) logits to ``{"model0", "vit", "average"}``
probabilities. ``SameConv1D``, ``BottleneckRefinement``, ``channel_shuffle``
and ``_pool1d`` are its pieces.

Seed quirks reproduced on purpose (each has a switch where one makes sense):

* The "max" pooling branch is ``AveragePooling1D`` too, so both rows of the
  (2, 1033) map are identical (``duplicate_avg_branch=True``; ``False`` uses a
  real ``MaxPooling1D`` branch of the same sizes, which is what the layer names
  ``max_pool_1..3`` suggest was meant).
* The ``vit`` head reads ``concat([F1, L])`` like ``model0`` (the authors cast
  the wrong tensor), so the two heads see the same information. Kept; there is
  no switch, as a "fixed" ``vit`` head would be a guess.
* Keras numerics: BatchNormalization momentum 0.99 and epsilon 1e-3; he_normal
  (truncated normal, std sqrt(2 / fan_in)) conv kernels with Keras' fan-in --
  for the DepthwiseConv1D Keras counts fan_in = 250 * 250 = 62,500 (std about
  0.00566), not Flax's 250; glorot_uniform Dense kernels; zero biases.

``refinement="bottleneck"`` is not in the live Keras graph; see
``BottleneckRefinement``. With ``refinement="none"`` (default) the trainable
parameters are the notebook's: 2,580,582 / 2,586,522 / 2,592,858 for 10 /
100 / 196 classes, plus 1,884 BatchNorm statistics in ``batch_stats``
(Keras' 2,582,466 / 2,588,406 / 2,594,742 in total).

Parameter names of ``HybridFusionHead`` (Flax ``params/...`` <- Keras weight).
Conv1D kernels (k, in, out) and Dense kernels (in, out) have the same layout
in both. The Keras BatchNormalization and final Dense layers have
auto-generated names (``batch_normalization_N``, ``dense_N``), so match them
by creation order, which is the order below:

  decrease_dimension_1/{kernel,bias}   <- model_1/decrease_dimension_1 (1,1033,500)
  conv2D_1_module_1/{kernel,bias}      <- model_1/conv2D_1_module_1 (3,1033,500)
  conv2D_1_module_1_bn/{scale,bias}    <- model_1's 1st BatchNormalization gamma, beta
                                          (moving_mean, moving_variance ->
                                          batch_stats .../{mean,var})
  conv2D_2_module_1/{kernel,bias}      <- model_1/conv2D_2_module_1 (1,500,250)
  conv2D_2_module_1_bn                 <- model_1's 2nd BatchNormalization
  conv2D_3_module_1/kernel (250,1,500) <- depthwise_kernel (250,250,2).reshape(250,1,500)
  conv2D_3_module_1/bias               <- bias (500), channel order c*2+m in both
  dense2w, dense2w_bn, dense1w, dense1w_bn, model0_logits
                                       <- dense2w, BN, dense1w, BN, Dense(C) of 'model0'
  dense_vit11, dense_vit11_bn, dense_vit12, dense_vit12_bn, vit_logits
                                       <- the same for the 'vit' head
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxattn.configlib import ConfigError
from jaxattn.models import kernels
from jaxattn.models.hybrid.backbone import IMAGENET_CLASSES

Array = jax.Array

# Keras initialisers. he_normal is a normal truncated at 2 std whose std after
# truncation is sqrt(2 / fan_in) -- exactly Flax's variance_scaling
# "truncated_normal". Keras and Flax agree on fan_in for Conv1D kernels
# (k, in / groups, out) and on glorot_uniform's fan_avg for Dense kernels.
_he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
_glorot_uniform = nn.initializers.glorot_uniform()


def _keras_depthwise_he_normal(channels: int) -> nn.initializers.Initializer:
  """he_normal as Keras applies it to a DepthwiseConv1D kernel.

  Keras' kernel is (k, channels, multiplier) and its fan_in is
  k * channels; Flax's grouped kernel is (k, 1, channels * multiplier) with
  fan_in k. Scaling the variance by 1 / channels gives Keras' std.
  """
  return nn.initializers.variance_scaling(2.0 / channels, "fan_in",
                                          "truncated_normal")



def _pool1d(x: Array, size: int, reduce) -> Array:
  """Keras Average/MaxPooling1D(size, strides=size, padding='valid') on (B, n).

  The ``n % size`` trailing values are dropped, as 'valid' does.
  """
  n = x.shape[1] // size
  return reduce(x[:, :n * size].reshape(x.shape[0], n, size), axis=-1)


def channel_shuffle(x: Array, groups: int) -> Array:
  """ShuffleNet channel shuffle on the last axis: (g, c/g) -> (c/g, g)."""
  *lead, c = x.shape
  return x.reshape(*lead, groups, c // groups).swapaxes(-1, -2).reshape(*lead, c)


class BottleneckRefinement(nn.Module):
  """A working version of the README's bottleneck block, on (B, L, C).

  The authors' ``bottleneck(x)`` exists only in dead code (it is never
  connected to the outputs). As written it does::

    conv = ELU(Conv1D(64, 5, 'same', he_normal)(x))
    DepthwiseConv1D(1, depth_multiplier=2)(x)        # output discarded
    x = x + conv
    y = ELU(Conv1D(64, 1, groups=4)(x))
    channel_mix(y, x): concat[y[..., 0:21], x[..., 0:1], y[..., 21:41],
                              x[..., 1:2], y[..., 43:63], x[..., 2:3]]

  This version keeps its first three steps and fixes the rest:

    h = x + ELU(Conv1D(C, 5, 'same')(x))              # as the original
    g = ELU(Conv1D(C, 1, groups=4)(h))                # as the original
    s = channel_shuffle(g, 4)                         # replaces channel_mix
    d = DepthwiseConv1D(3, 'same', depth_multiplier=2)(s)   # now used: (B, L, 2C)
    out = h + Conv1D(C, 1, groups=4)(d)               # back to C, residual

  What differs and why:

  * The depthwise conv's output is used. Its kernel is 3, not 1: a k=1
    depthwise conv followed by a linear 1x1 conv folds into that conv and would
    add nothing; with k=3 it mixes the neighbouring positions per channel.
  * ``channel_mix`` dropped channels 41, 42 and 63 and spliced in raw input
    channels 0-2; it is replaced by a ShuffleNet shuffle, which mixes
    information across the 4 groups without losing channels. A shuffle only
    matters if a grouped conv follows, hence the second grouped 1x1 conv, which
    also maps the 2C depthwise channels back to C (the depthwise output order
    is c * 2 + m, so both outputs of a channel stay in one group).
  * The output keeps the input's shape and ends in a residual, so the block is
    a drop-in refinement and the heads are unchanged.
  * He-normal kernels with the true fan-in (Flax's), including the depthwise
    kernel; Keras' depthwise fan-in (k * C) would start that branch near zero.

  On the fusion map (L=2, C=500) it adds 1,443,000 parameters. With L=2, only
  the middle three taps of the k=5 conv ever see data (as with any 'same'
  conv longer than 2L - 1).
  """

  groups: int = 4
  kernel_size: int = 5
  depthwise_kernel_size: int = 3
  depth_multiplier: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    if c % self.groups:
      raise ConfigError(f"{c} channels are not divisible into groups="
                        f"{self.groups}.")
    conv = lambda features, k, name, groups=1: nn.Conv(
        features, (k,), padding="SAME", feature_group_count=groups,
        dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_he_normal,
        bias_init=nn.initializers.zeros, name=name)
    h = x + nn.elu(conv(c, self.kernel_size, "conv")(x))
    g = nn.elu(conv(c, 1, "group_conv_1", self.groups)(h))
    s = channel_shuffle(g, self.groups)
    d = conv(c * self.depth_multiplier, self.depthwise_kernel_size, "depthwise",
             c)(s)
    return h + conv(c, 1, "group_conv_2", self.groups)(d)


class SameConv1D(nn.Module):
  """``nn.Conv(features, (k,), padding="SAME", feature_group_count=groups)``
  on (B, L, C): the same parameters (kernel [k, C/groups, features], bias)
  and outputs, computed by ``kernels.conv1d_same``. ``groups`` is 1 or C
  (depthwise, output channel c * multiplier + m reads input channel c).
  """

  features: int
  kernel_size: int
  groups: int = 1
  dtype: Any = jnp.float32
  kernel_init: nn.initializers.Initializer = _he_normal

  @nn.compact
  def __call__(self, x: Array) -> Array:
    channels = x.shape[-1]
    if self.groups not in (1, channels) or self.features % self.groups:
      raise ConfigError(
          f"SameConv1D supports groups=1 or depthwise groups={channels} with "
          f"features a multiple of it; got groups={self.groups}, features="
          f"{self.features}.")
    kernel = self.param("kernel", self.kernel_init,
                        (self.kernel_size, channels // self.groups,
                         self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,),
                      jnp.float32)
    out = kernels.conv1d_same(x.astype(self.dtype), kernel.astype(self.dtype),
                              self.groups)
    return out + bias.astype(self.dtype)


REFINEMENTS = ("none", "bottleneck")


class HybridFusionHead(nn.Module):
  """Keras ``model_1`` ("Attention Module 1") plus the ``model0``/``vit`` heads.

  Takes the backbone's (B, n) logits (n = 1000 for the authors' ViT-B/8) and
  returns ``{"model0": p0, "vit": p1, "average": (p0 + p1) / 2}``, float32
  probabilities (B, num_classes). ``dtype`` is the compute dtype; parameters
  are float32 and both softmaxes and final Dense layers run in float32.

  ``model_1`` (shapes (B, length, channels)):

    L (B,n,1) -> AveragePooling1D 2, 3, 5 ('valid', stride = size), concat
      -> (B,1033,1) for n = 1000; the "max" branch is the same (see
      ``duplicate_avg_branch``); stacked as rows [max, avg] -> a1 (B,2,1033)
    input_dec = decrease_dimension_1: Conv1D(500, 1)(a1)
    x1 = softmax_channels(BN(conv2D_1_module_1: Conv1D(500, 3, 'same')(a1)))
    x2 = ELU(BN(conv2D_2_module_1: Conv1D(250, 1)(input_dec * x1)))
    x2 = conv2D_3_module_1: DepthwiseConv1D(250, 'same', multiplier 2)(x2)
    F1 = flatten(input_dec * x2)            # (B, 1000), row-major

  Heads, both on concat([F1, L]) (the authors' 'vit' head bug, kept):
    Dense(64, elu) -> BN -> Dropout(0.2) -> Dense(32, elu) -> BN
      -> Dropout(0.2) -> Dense(C) -> softmax

  With ``duplicate_avg_branch=False`` the first row is a real max pooling of
  the same sizes. ``refinement="bottleneck"`` applies ``BottleneckRefinement``
  to ``input_dec * x2`` before flattening.
  """

  num_classes: int = 10
  duplicate_avg_branch: bool = True
  refinement: str = "none"
  dtype: Any = jnp.float32

  def _conv(self, features, kernel_size, name, groups=1, kernel_init=_he_normal):
    # Keras Conv1D 'same' on a length-2 sequence: k=3 pads 1/1, k=250 pads
    # 124/125 (TF puts the extra one on the right, as Flax 'SAME' does).
    return SameConv1D(features, kernel_size, groups, dtype=self.dtype,
                      kernel_init=kernel_init, name=name)

  def _batch_norm(self, name, train):
    return nn.BatchNorm(use_running_average=not train, momentum=0.99,
                        epsilon=1e-3, dtype=self.dtype, param_dtype=jnp.float32,
                        name=name)

  def _attention_module_1(self, logits: Array, train: bool) -> Array:
    pools = (2, 3, 5)
    avg = jnp.concatenate([_pool1d(logits, s, jnp.mean) for s in pools], axis=1)
    if self.duplicate_avg_branch:
      first = avg  # The authors' max_pool_1..3 are AveragePooling1D.
    else:
      first = jnp.concatenate([_pool1d(logits, s, jnp.max) for s in pools], axis=1)
    a1 = jnp.stack([first, avg], axis=1)  # (B, 2, 1033): rows [max, avg].
    input_dec = self._conv(500, 1, "decrease_dimension_1")(a1)
    x1 = self._conv(500, 3, "conv2D_1_module_1")(a1)
    x1 = self._batch_norm("conv2D_1_module_1_bn", train)(x1)
    # Keras Activation('softmax') on (B, 2, 500): over the 500 channels.
    x1 = jax.nn.softmax(x1.astype(jnp.float32), axis=-1).astype(self.dtype)
    x2 = self._conv(250, 1, "conv2D_2_module_1")(input_dec * x1)
    x2 = nn.elu(self._batch_norm("conv2D_2_module_1_bn", train)(x2))
    # DepthwiseConv1D(250, 1, 'same', depth_multiplier=2): output channel
    # c * 2 + m, which is Flax's grouped-conv order.
    x2 = self._conv(500, 250, "conv2D_3_module_1", groups=250,
                    kernel_init=_keras_depthwise_he_normal(250))(x2)
    return input_dec * x2

  def _head(self, x: Array, names: tuple[str, str, str], train: bool) -> Array:
    for features, name in zip((64, 32), names[:2]):
      x = nn.Dense(features, dtype=self.dtype, param_dtype=jnp.float32,
                   kernel_init=_glorot_uniform, bias_init=nn.initializers.zeros,
                   name=name)(x)
      x = self._batch_norm(f"{name}_bn", train)(nn.elu(x))
      x = nn.Dropout(0.2, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes, dtype=jnp.float32,
                      param_dtype=jnp.float32, kernel_init=_glorot_uniform,
                      bias_init=nn.initializers.zeros, name=names[2])(x)
    return jax.nn.softmax(logits, axis=-1)

  @nn.compact
  def __call__(self, logits: Array, *, train: bool = False) -> dict[str, Array]:
    if logits.ndim != 2:
      raise ValueError(f"Expected backbone logits of shape (batch, {IMAGENET_CLASSES})"
                       f", got shape {tuple(logits.shape)}.")
    if self.refinement not in REFINEMENTS:
      raise ConfigError(f"Unknown refinement {self.refinement!r}; known: "
                        f"{', '.join(REFINEMENTS)}.")
    logits = logits.astype(self.dtype)
    z = self._attention_module_1(logits, train)
    if self.refinement == "bottleneck":
      z = BottleneckRefinement(dtype=self.dtype, name="bottleneck")(z)
    f1 = z.reshape(z.shape[0], -1)  # Keras Flatten: row-major (B, 1000).
    # The authors' 'vit' head was meant to read the ViT branch, but it is
    # given the same concat([F1, L]) as 'model0'. Kept as they ran it.
    features = jnp.concatenate([f1, logits], axis=-1)
    model0 = self._head(features, ("dense2w", "dense1w", "model0_logits"), train)
    vit = self._head(features, ("dense_vit11", "dense_vit12", "vit_logits"),
                     train)
    return {"model0": model0, "vit": vit, "average": (model0 + vit) / 2}
