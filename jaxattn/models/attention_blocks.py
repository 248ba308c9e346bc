"""Reusable attention blocks on NHWC feature maps (seed 003 and friends).

Blocks (all linen modules; ``dtype`` is the compute dtype, parameters are
always float32):

* ``GSoP``: global second-order pooling channel attention (GSoP-Net, Gao et
  al., CVPR 2019), channel mode '1'. DERIVED from the official code
  (``ZilinGao/Global-Second-order-Pooling-Convolutional-Networks``,
  ``torchvision/models/resnet.py`` ``Bottleneck.chan_att`` and ``MPNCOV.py``),
  because seed 003 only describes it. See ``specs/seeds.md`` "Seed 003" 2c.
* ``SqueezeExcitation``: the seed's ``SEBlock`` (Hu et al., SENet).
* ``SelfAttention2D``: the seed's SAGAN-style ``SelfAttentionBlock``.
* ``FeatureMapSelfAttention``: standard multi-head self-attention
  (``transformer.MultiHeadSelfAttention``, PyTorch's Linear init) over the
  H*W positions of a map.

Layout rule for a PyTorch -> Flax converter, the same for every block here:

* every ``Conv2d`` is an ``nn.Conv``: ``kernel [kh,kw,in/groups,out] <-
  weight [out,in/groups,kh,kw].transpose(2, 3, 1, 0)``, ``bias <- bias``;
* every ``Linear`` is an ``nn.Dense``: ``kernel [in,out] <- weight.T``;
* every ``BatchNorm``: ``params scale <- weight``, ``params bias <- bias``,
  ``batch_stats mean <- running_mean``, ``batch_stats var <- running_var``
  (``num_batches_tracked`` has no counterpart and is dropped).

Submodules carry the PyTorch attribute names (``conv_for_DR``, ``query_conv``,
...); where PyTorch uses an ``nn.Sequential`` index, ``fc.0`` becomes
``fc_0``. Each block's docstring lists its keys.

BatchNorm follows PyTorch's defaults (momentum 0.1 == Flax 0.9, eps 1e-5).
One difference Flax cannot switch off: PyTorch updates ``running_var`` with
the *unbiased* batch variance (n/(n-1) larger), Flax with the biased one.
Evaluation with converted statistics is unaffected.
"""

from collections.abc import Callable
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxattn.configlib import ConfigError
from jaxattn.models import layers, transformer

Array = jax.Array
Initializer = Callable[..., Array]


def _check_nhwc(x: Array, block: str) -> None:
  if x.ndim != 4:
    raise ValueError(
        f"{block} expects a feature map of shape (batch, height, width, "
        f"channels) (NHWC), got shape {tuple(x.shape)}.")


# --------------------------------------------------------------------------
# GSoP: global second-order pooling (GSoP-Net, channel mode '1').
# --------------------------------------------------------------------------


def covariance(x: Array) -> Array:
  """GSoP-Net's ``CovpoolLayer``: per-sample channel covariance, (B,d,d).

  With X the (d, M) matrix of one sample's M = H*W positions, the official
  code computes ``X Î Xᵀ`` with ``Î = (1/M)(I - (1/M) 11ᵀ)``. Since
  ``I - 11ᵀ/M`` is a symmetric idempotent centring projector, this equals
  ``(1/M) Xc Xcᵀ`` with ``Xc`` the mean-centred X: the biased (1/M)
  covariance, which is how it is computed here (no M x M matrix, and better
  conditioned). Always float32, whatever the input dtype: it sums over M.

  Args:
    x: (B, H, W, d) feature map.
  Returns:
    (B, d, d) float32, symmetric.
  """
  if x.ndim != 4:
    raise ValueError(
        f"covariance expects (batch, height, width, channels), got shape "
        f"{tuple(x.shape)}.")
  b, h, w, d = x.shape
  x = x.reshape(b, h * w, d).astype(jnp.float32)
  xc = x - x.mean(axis=1, keepdims=True)
  return jnp.einsum("bmi,bmj->bij", xc, xc) / (h * w)


class GSoP(nn.Module):
  """GSoP-Net channel attention (mode '1'); returns ``x * gate``.

  DERIVED from the official GSoP-Net code (seed 003 has no GSoP code). On an
  NHWC input x with C channels:

  1. ReLU -> ``conv_for_DR`` 1x1 conv C->d (bias, stride
     ``dim_reduction_stride``) -> ``bn_for_DR`` -> ReLU.
  2. ``covariance``: (B, d, d), the official (B, d, d, 1) "image" whose
     channels are the covariance *rows*.
  3. ``row_bn``: BatchNorm over those d channels, i.e. one mean/var/scale/
     bias per row i, statistics over the batch and the columns j.
  4. ``row_conv_group``: Conv2d(d, 4d, kernel (d, 1), groups=d, bias). Group
     i sees only row i: ``z[4i+k] = sum_j W[4i+k, 0, j, 0] * S[i, j] + b``.
  5. ``fc_adapt_channels`` 1x1 conv 4d->C (bias) -> sigmoid = gate (B, C).

  In GSoP-Net it runs after bn3 of a Bottleneck, before the residual add, with
  d=128 and stride 2 when the bottleneck width ``planes <= 64`` else 1; the
  caller picks the stride. The ReLU in step 1 does not touch the returned x.
  The last step has no nonlinearity between the row conv and the FC, as in
  the official channel branch.

  Init: PyTorch defaults (``kernel_init`` may be overridden: GSoP-Net's ResNet
  re-initialises *every* Conv2d, these included, with
  ``kaiming_normal_(mode='fan_out', nonlinearity='relu')``, i.e.
  ``nn.initializers.variance_scaling(2.0, "fan_out", "normal")``); biases keep
  PyTorch's U(+-1/sqrt(fan_in)); BN scale 1, bias 0.

  Flax names <- PyTorch (``Bottleneck`` attributes; prefix with the block's
  path, e.g. ``layer1.0.``):

    conv_for_DR/kernel [1,1,C,d]       <- conv_for_DR.weight [d,C,1,1] (2,3,1,0)
    conv_for_DR/bias [d]               <- conv_for_DR.bias
    bn_for_DR/{scale,bias}             <- bn_for_DR.{weight,bias}
    batch_stats bn_for_DR/{mean,var}   <- bn_for_DR.{running_mean,running_var}
    row_bn/...                         <- row_bn.* (same rule)
    row_conv_group/kernel [d,1,1,4d]   <- row_conv_group.weight [4d,1,d,1] (2,3,1,0)
    row_conv_group/bias [4d]           <- row_conv_group.bias
    fc_adapt_channels/kernel [1,1,4d,C] <- fc_adapt_channels.weight [C,4d,1,1] (2,3,1,0)
    fc_adapt_channels/bias [C]         <- fc_adapt_channels.bias
  """

  reduced_dim: int = 128
  dim_reduction_stride: int = 1
  dtype: Any = jnp.float32
  kernel_init: Initializer = layers.kernel_init

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    _check_nhwc(x, "GSoP")
    c, d, s = x.shape[-1], self.reduced_dim, self.dim_reduction_stride
    y = nn.relu(x)
    y = layers.conv(d, (1, 1), c, "conv_for_DR", self.dtype,
                    strides=(s, s), kernel_init=self.kernel_init)(y)
    y = nn.relu(layers.batch_norm(train, "bn_for_DR", self.dtype)(y))
    cov = covariance(y)  # (B, i, j), float32
    # NHWC view of the official (B, d_i, d_j, 1): height j, width 1, channel i.
    rows = cov.transpose(0, 2, 1)[:, :, None, :]
    rows = layers.batch_norm(train, "row_bn", self.dtype)(rows)
    z = _RowConvGroup(d, self.dtype, self.kernel_init,
                      name="row_conv_group")(rows)
    z = layers.conv(c, (1, 1), 4 * d, "fc_adapt_channels", self.dtype,
                    kernel_init=self.kernel_init)(z)  # (B, 1, 1, C)
    gate = nn.sigmoid(z.astype(jnp.float32)).astype(x.dtype)
    return x * gate


class _RowConvGroup(nn.Module):
  """``Conv2d(d, 4d, kernel (d, 1), groups=d)`` on (B, d, 1, d) rows.

  Each group is one channel: output ``4g + k`` is the dot product of row
  ``g`` of the covariance with its own weight vector. Written as one einsum,
  with the parameters nn.Conv would have (kernel [d, 1, 1, 4d], bias [4d],
  same initialisers): XLA's CPU backend has no fast grouped convolution and
  this one took seconds per step, forward and backward.
  """

  reduced_dim: int
  dtype: Any
  kernel_init: Initializer

  @nn.compact
  def __call__(self, rows: Array) -> Array:
    d = self.reduced_dim
    kernel = self.param("kernel", self.kernel_init, (d, 1, 1, 4 * d),
                        jnp.float32)
    bias = self.param("bias", layers.bias_init(d), (4 * d,),
                      jnp.float32)
    rows, kernel, bias = nn.dtypes.promote_dtype(rows, kernel, bias,
                                                 dtype=self.dtype)
    # kernel[j, 0, 0, 4g + k] -> [j, g, k]; rows[b, j, 0, g].
    z = jnp.einsum("bjg,jgk->bgk", rows[:, :, 0, :],
                   kernel.reshape(d, d, 4))
    return z.reshape(rows.shape[0], 1, 1, 4 * d) + bias


# --------------------------------------------------------------------------
# Squeeze-and-excitation (seed 003's SEBlock).
# --------------------------------------------------------------------------


class SqueezeExcitation(nn.Module):
  """SE block: ``x * sigmoid(W2 relu(W1 GAP(x)))``, both Linear without bias.

  Seed 003's ``SEBlock(C, reduction=16)``: ``AdaptiveAvgPool2d(1)`` ->
  ``fc = Sequential(Linear(C, C//16, bias=False), ReLU, Linear(C//16, C,
  bias=False), Sigmoid)`` -> ``x * y``.

  Quirk kept on purpose: the hidden width ``C // reduction`` may be 0 (C=12 in
  the seed). The layers then have kernels of shape [C, 0] and [0, C], the
  pre-sigmoid value is an empty sum = 0, and the gate is sigmoid(0) = 0.5
  exactly: the block multiplies its input by a constant 0.5 and learns
  nothing. ``hidden`` overrides the width when set.

  The pool and the gate run in float32.

  Flax names <- PyTorch: ``fc_0/kernel [C,h] <- fc.0.weight [h,C].T``,
  ``fc_2/kernel [h,C] <- fc.2.weight [C,h].T``.
  """

  reduction: int = 16
  hidden: Optional[int] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    _check_nhwc(x, "SqueezeExcitation")
    c = x.shape[-1]
    if self.hidden is None:
      if self.reduction < 1:
        raise ConfigError(f"reduction must be >= 1, got {self.reduction}.")
      hidden = c // self.reduction
    else:
      hidden = self.hidden
    if hidden < 0:
      raise ConfigError(f"hidden must be >= 0, got {hidden}.")

    def fc(features, name):
      return nn.Dense(features, use_bias=False, dtype=self.dtype,
                      param_dtype=jnp.float32, kernel_init=layers.kernel_init,
                      name=name)

    y = jnp.mean(x, axis=(1, 2), dtype=jnp.float32)  # (B, C)
    y = nn.relu(fc(hidden, "fc_0")(y))
    gate = nn.sigmoid(fc(c, "fc_2")(y).astype(jnp.float32))
    return x * gate.astype(x.dtype)[:, None, None, :]


# --------------------------------------------------------------------------
# SAGAN-style self-attention (seed 003's SelfAttentionBlock).
# --------------------------------------------------------------------------


class SelfAttention2D(nn.Module):
  """SAGAN self-attention over the H*W positions; identity at init.

  Seed 003's ``SelfAttentionBlock(C)`` (after Zhang et al., SAGAN):
  ``query_conv``/``key_conv`` 1x1 C->C//8 and ``value_conv`` 1x1 C->C, all
  with bias; ``gamma`` (1,) initialised to 0. With positions n = h*W + w
  (PyTorch's ``view(B, C, H*W)`` order):

    energy[n, m] = sum_c Q[c, n] K[c, m]        (no 1/sqrt(d) scaling)
    A = softmax(energy, over m)                 (the key axis, dim=-1)
    out[c, n] = sum_m V[c, m] A[n, m]           (bmm(V, Aᵀ) in the seed)
    return gamma * out + x

  Here the same is computed channels-last: Q, K (B, N, C//8), V (B, N, C),
  ``out[n, c] = sum_m A[n, m] V[m, c]``, which is the seed's out transposed,
  and is reshaped back to (B, H, W, C). The scores and softmax run in
  float32. The attention map (B, N, N) is sown into ``intermediates`` as
  ``attention``. N² memory: 900² per image for the seed's 30x30 map.

  Flax names <- PyTorch: ``{query,key,value}_conv/kernel [1,1,C,out] <-
  {query,key,value}_conv.weight [out,C,1,1].transpose(2, 3, 1, 0)``, biases
  as is, ``gamma [1] <- gamma [1]``.
  """

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    _check_nhwc(x, "SelfAttention2D")
    b, h, w, c = x.shape
    def project(features, name):  # A 1x1 conv, flattened to (B, N, features).
      conv = layers.conv(features, (1, 1), c, name, self.dtype)
      return conv(x).reshape(b, h * w, features)

    q = project(c // 8, "query_conv")
    k = project(c // 8, "key_conv")
    v = project(c, "value_conv")
    energy = jnp.einsum("bnc,bmc->bnm", q, k,
                        preferred_element_type=jnp.float32)
    attention = jax.nn.softmax(energy, axis=-1)
    self.sow("intermediates", "attention", attention)
    out = jnp.einsum("bnm,bmc->bnc", attention.astype(self.dtype), v)
    gamma = self.param("gamma", nn.initializers.zeros, (1,), jnp.float32)
    out = gamma.astype(self.dtype) * out.reshape(b, h, w, c)
    return out + x


# --------------------------------------------------------------------------
# Multi-head self-attention over a feature map.
# --------------------------------------------------------------------------


class FeatureMapSelfAttention(nn.Module):
  """``transformer.MultiHeadSelfAttention`` over the H*W positions of an
  NHWC map.

  Tokens are the positions in row-major order (n = h*W + w), features the
  channels; the result is reshaped back to (B, H, W, C) and, with
  ``residual`` (default), added to x. No positional information is added.
  Parameters live under ``attention/``: ``{query,key,value,out}/kernel
  [C,C]``, ``bias [C]``, Linear(C, C) each with PyTorch's default init
  (``transformer.TORCH_LINEAR``); converted from ``nn.MultiheadAttention``
  as ``transformer.MultiHeadSelfAttention`` describes.
  """

  num_heads: int
  residual: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    _check_nhwc(x, "FeatureMapSelfAttention")
    b, h, w, c = x.shape
    y = transformer.MultiHeadSelfAttention(
        self.num_heads, self.dtype, **transformer.TORCH_LINEAR,
        name="attention")(x.reshape(b, h * w, c)).reshape(b, h, w, c)
    return y + x if self.residual else y
