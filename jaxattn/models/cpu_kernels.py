"""The CPU kernels: rewrites of plain ops that XLA:CPU runs faster.

``kernels`` picks these where a step is compiled for the CPU (never on a
GPU or TPU, where the barriers below would stop XLA's fusions). Each
function equals the plain expression in its docstring (the same values
up to float rounding, exact gradients); only what XLA computes, stores and
transposes changes. Each rule below came out of a profile of a train step
(seeds 004, 003 and 001; ``benchmarks/README.md``):

* ``gelu``: PyTorch's exact GELU, ``0.5 x (1 + erf(x / sqrt 2))``.
  ``jax.nn.gelu(approximate=False)`` goes through ``erfc`` (two exp/select
  passes forward), and autodiff saved ``erf`` for the backward pass; here the
  forward is one fused pass and the backward one more, from ``x`` alone.
* ``layer_norm_no_affine``: LayerNorm without its affine part, with
  PyTorch's numerics (two-pass variance, eps inside the root). The backward
  pass is the closed form ``rstd * (g - mean(g) - xhat * mean(g * xhat))``
  in one fused pass.
  Callers fold the affine part into the next linear map where they can.
* ``dense``: ``x @ kernel + bias`` whose weight gradient contracts an
  explicitly transposed copy of the narrower operand. Autodiff's form made
  XLA transpose the wider operand and fall back to a slow generic dot. Its
  dots accumulate in float32 (``preferred_element_type``), which is also
  what puts bfloat16 dots on the CPU's AMX units.
* ``batch_norm``: training-mode BatchNorm whose batch-and-space sums (in
  the forward and the closed-form backward pass) are products with a ones
  vector; XLA:CPU turned autodiff's sums into slow reduce-windows.
* ``max_pool_3x3_s2``: the ResNet stem's max pool with its gradient computed
  per phase of the stride instead of XLA's select-and-scatter.
* ``conv2d``: ``lax.conv_general_dilated`` (NHWC, HWIO, explicit padding)
  whose strided case runs as a stride-1 convolution over a space-to-depth
  view of the input. XLA:CPU differentiates a strided convolution into an
  lhs-dilated one for the input gradient and ran that through a generic
  loop: seed 003's 6x6 stride-2 convs were the largest ops of its profile.
  Output maps of at most ``SMALL_MAP_PIXELS`` pixels are one matmul of the
  gathered k*k*in patches (im2col): XLA:CPU hands such convolutions
  (SL-ResNet's layer4 3x3 convs at 2x2 for 64 px inputs) to a generic
  fallback that took ~0.2 s per conv at batch 32, forward and backward each.
* ``conv1d_same``: a 'SAME' 1-D convolution as a sum of per-tap matmuls
  over the taps that reach data. On the hybrid fusion head's length-2
  sequences a kernel of k taps only ever multiplies its 2L - 1 = 3 middle
  taps with data, and XLA:CPU ran the depthwise k=250 conv's weight gradient
  as a dilated convolution over all taps (a quarter of a second per step at
  batch 64).
* ``map_in_chunks``: runs a per-example function over slices of the batch,
  each recomputed in the backward pass (``jax.checkpoint``), so a chunk's
  forward and backward both work on cache-sized arrays; a whole batch of
  seed 004's activations (16 MiB per hidden layer at batch 128) does not fit
  in a CPU core's 2 MiB L2.
* ``conv_vit_trunk``: seed 004's embedding and blocks, the same function as
  its modules reassociated: each channel-attention branch from a per-image
  Gram matrix of its normalised input and one per-image D x D projection,
  the LayerNorms' affine parts folded into the small matrices after them,
  the patch conv as a reshape and one matmul, the batch in chunks
  (``map_in_chunks``). In the profile the plain form's projections and
  per-head transposes took 23 ms of a 410 ms step, the LayerNorm's
  materialised scale broadcast 28 ms.

Every function returns the input's dtype; normalisations, statistics and
weight gradients are computed in float32.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default.
# Convolutions whose output maps have at most this many pixels run as im2col.
SMALL_MAP_PIXELS = 4


@jax.custom_vjp
def gelu(x: Array) -> Array:
  """``torch.nn.GELU()``: ``0.5 x (1 + erf(x / sqrt 2))``."""
  xf = x.astype(jnp.float32)
  return (0.5 * xf * (1.0 + jax.lax.erf(xf * _SQRT_HALF))).astype(x.dtype)


def _gelu_fwd(x):
  return gelu(x), x


def _gelu_bwd(x, dy):
  # Without the barrier XLA shares erf(x) with the forward pass and stores it:
  # a full extra write and read of the widest activation, dearer than erf.
  xf = jax.lax.optimization_barrier(x).astype(jnp.float32)
  cdf = 0.5 * (1.0 + jax.lax.erf(xf * _SQRT_HALF))
  pdf = jnp.exp(-0.5 * xf * xf) * _INV_SQRT_2PI
  return ((dy.astype(jnp.float32) * (cdf + xf * pdf)).astype(dy.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


@jax.custom_vjp
def layer_norm_no_affine(x: Array) -> Array:
  """``(x - mean) / sqrt(var + 1e-5)`` over the last axis (biased variance)."""
  return _layer_norm_no_affine_fwd(x)[0]


def _layer_norm_no_affine_fwd(x):
  xf = x.astype(jnp.float32)
  centred = xf - jnp.mean(xf, axis=-1, keepdims=True)
  rstd = jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) +
                       LAYER_NORM_EPS)
  xhat = (centred * rstd).astype(x.dtype)
  return xhat, (xhat, rstd)


def _layer_norm_no_affine_bwd(residuals, g):
  xhat, rstd = residuals
  gf, xf = g.astype(jnp.float32), xhat.astype(jnp.float32)
  dx = rstd * (gf - jnp.mean(gf, axis=-1, keepdims=True) -
               xf * jnp.mean(gf * xf, axis=-1, keepdims=True))
  return (dx.astype(g.dtype),)


layer_norm_no_affine.defvjp(_layer_norm_no_affine_fwd,
                            _layer_norm_no_affine_bwd)


@jax.custom_vjp
def dense(x: Array, kernel: Array, bias: Array | None = None) -> Array:
  """``x @ kernel + bias`` over the last axis of x, in x's dtype.

  ``kernel`` [in, out] and ``bias`` [out] (or None: no bias) are the float32
  parameters; their gradients come back in float32 (accumulated in float32
  under bfloat16).
  """
  # float32 accumulation, one rounding at the end: XLA:CPU upcasts a dot with
  # a bfloat16 result to float32 operands (no AMX), but runs bf16 x bf16 ->
  # f32 dots on AMX (4-6x its fp32 matmuls, benchmarks/README.md).
  y = jnp.matmul(x, kernel.astype(x.dtype), preferred_element_type=jnp.float32)
  return (y if bias is None else y + bias).astype(x.dtype)


def _dense_fwd(x, kernel, bias):
  return dense(x, kernel, bias), (x, kernel, bias is not None)


def _dense_bwd(residuals, dy):
  x, kernel, has_bias = residuals
  fan_in, features = kernel.shape
  rows_x, rows_dy = x.reshape(-1, fan_in), dy.reshape(-1, features)
  f32 = jnp.float32
  # Contract over the rows with a transposed copy of the narrower operand;
  # the barriers stop XLA from folding the transposes back into the dot.
  if fan_in <= features:
    x_t = jax.lax.optimization_barrier(rows_x.T)
    dkernel = jnp.matmul(x_t, rows_dy, preferred_element_type=f32)
  else:
    dy_t = jax.lax.optimization_barrier(rows_dy.T)
    dkernel = jax.lax.optimization_barrier(
        jnp.matmul(dy_t, rows_x, preferred_element_type=f32)).T
  dx = jnp.matmul(dy, kernel.T.astype(dy.dtype),
                  preferred_element_type=f32).astype(dy.dtype)
  dbias = (jnp.sum(rows_dy, axis=0, dtype=f32).astype(kernel.dtype)
           if has_bias else None)
  return dx, dkernel.astype(kernel.dtype), dbias


dense.defvjp(_dense_fwd, _dense_bwd)


def _column_sums(rows: Array) -> Array:
  """``rows.sum(0)`` as a vector-matrix product.

  XLA:CPU rewrote the batch-and-space sums of BatchNorm's backward pass into
  reduce-windows that took 60 ms each on a 16 MiB activation (SL-ResNet-50,
  64 px); a product with a ones vector reads the rows once at memory speed.
  """
  return jnp.ones((rows.shape[0],), rows.dtype) @ rows


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm(x: Array, scale: Array, bias: Array,
               epsilon: float) -> tuple[Array, Array, Array]:
  """Training-mode ``nn.BatchNorm`` over all axes but the last.

  Returns ``(y, mean, var)``: ``y = (x - mean) * (rsqrt(var + eps) * scale) +
  bias`` in x's dtype, with Flax's float32 statistics (``var = E[x^2] -
  E[x]^2``, clipped at 0: ``use_fast_variance``); mean and var are for the
  running averages. The backward pass is the closed form
  ``scale * rstd * (g - mean(g) - xhat * mean(g * xhat))``, its sums as
  products with a ones vector (``_column_sums``).
  """
  return _batch_norm_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_fwd(x, scale, bias, epsilon):
  c = x.shape[-1]
  rows = x.reshape(-1, c).astype(jnp.float32)
  n = rows.shape[0]
  mean = _column_sums(rows) / n
  var = jnp.maximum(0.0, _column_sums(rows * rows) / n - mean * mean)
  rstd = jax.lax.rsqrt(var + epsilon)
  y = (x.astype(jnp.float32) - mean) * (rstd * scale) + bias
  return (y.astype(x.dtype), mean, var), (x, mean, rstd, scale)


def _batch_norm_bwd(epsilon, residuals, cotangents):
  del epsilon
  x, mean, rstd, scale = residuals
  dy, dmean, dvar = cotangents
  c = x.shape[-1]
  rows_x = x.reshape(-1, c).astype(jnp.float32)
  rows_dy = dy.reshape(-1, c).astype(jnp.float32)
  n = rows_x.shape[0]
  centred = rows_x - mean
  xhat = centred * rstd
  dbias = _column_sums(rows_dy)
  dscale = _column_sums(rows_dy * xhat)
  dx = (scale * rstd) * (rows_dy - dbias / n - xhat * (dscale / n))
  # The statistics' own cotangents (zero when only y reaches the loss).
  dx = dx + dmean / n + centred * (2.0 * dvar / n)
  return dx.reshape(x.shape).astype(x.dtype), dscale, dbias


batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


@jax.custom_vjp
def max_pool_3x3_s2(x: Array) -> Array:
  """``MaxPool2d(3, stride=2, padding=1)`` on NHWC maps (-inf padding).

  The gradient goes to the first maximum of each window in row-major order,
  as XLA's select-and-scatter and PyTorch route it, but is computed per
  phase: window tap (i, j) of output (o, p) reads padded pixel
  (2o + i, 2p + j), so the even and odd padded rows and columns each receive
  a sum of shifted tap gradients, interleaved once at the end. XLA:CPU's
  select-and-scatter took ~150 ms of SL-ResNet-50's 2.1 s step at 64 px.
  """
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1),
                               (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))


def _max_pool_fwd(x):
  y = max_pool_3x3_s2(x)
  return y, (x, y)


def _max_pool_bwd(residuals, dy):
  x, y = residuals
  b, out_h, out_w, c = y.shape
  xp = jnp.pad(x, ((0, 0), (1, 2 * out_h + 1 - x.shape[1]),
                   (1, 2 * out_w + 1 - x.shape[2]), (0, 0)),
               constant_values=-jnp.inf)
  found = jnp.zeros(y.shape, bool)
  taps = {}
  for i in range(3):
    for j in range(3):
      window = xp[:, i:i + 2 * out_h - 1:2, j:j + 2 * out_w - 1:2]
      hit = (window == y) & ~found
      found = found | hit
      taps[i, j] = jnp.where(hit, dy, jnp.zeros((), dy.dtype))
  # Padded row 2k + r receives tap i = r + 2m from output row k - m.
  def shifted(g, di, dj):  # g at (k - di, l - dj), on an (out + 1)^2 grid.
    return jnp.pad(g, ((0, 0), (di, 1 - di), (dj, 1 - dj), (0, 0)))
  phase = [[None, None], [None, None]]
  for r in range(2):
    for q in range(2):
      phase[r][q] = sum(shifted(taps[i, j], i // 2, j // 2)
                        for i in range(r, 3, 2) for j in range(q, 3, 2))
  grid = jnp.stack([jnp.stack(row, axis=3) for row in phase], axis=2)
  dxp = grid.reshape(b, 2 * out_h + 2, 2 * out_w + 2, c)
  return (dxp[:, 1:1 + x.shape[1], 1:1 + x.shape[2]],)


max_pool_3x3_s2.defvjp(_max_pool_fwd, _max_pool_bwd)


def conv2d(x: Array, kernel: Array, strides: tuple[int, int],
           padding: tuple[tuple[int, int], tuple[int, int]]) -> Array:
  """``lax.conv_general_dilated(x, kernel, strides, padding)``, NHWC x HWIO.

  A stride-s convolution with a k x k kernel is the stride-1 convolution of
  the input's s x s space-to-depth blocks (H/s, W/s, s*s*C) with the kernel
  folded the same way (k/s taps of s*s*C inputs): output pixel o reads input row s*o + i = s*(o + a) + r for
  tap i = s*a + r, i.e. block row o + a at phase r. Both are plain stride-1
  convolutions forward and backward. Only kernels that the stride divides
  take this path (seed 003's 6x6/2); others would need zero taps (a 3x3/2
  ran 1.6x slower so). A 1x1
  kernel is a (subsampling and a) ``dense`` over channels, whose weight
  gradient avoids XLA's transposes of the wide activation. Everything else
  goes to ``lax.conv_general_dilated`` as it is.
  """
  (sh, sw), (kh, kw) = strides, kernel.shape[:2]
  dimension_numbers = ("NHWC", "HWIO", "NHWC")
  out_h = (x.shape[1] + sum(padding[0]) - kh) // sh + 1
  out_w = (x.shape[2] + sum(padding[1]) - kw) // sw + 1
  if out_h * out_w <= SMALL_MAP_PIXELS:
    return _im2col_conv(x, kernel, strides, padding, (out_h, out_w))
  if kh == kw == 1:  # A matmul over channels, of the subsampled map.
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))[:, ::sh, ::sw]
    return dense(x, kernel.reshape(kernel.shape[2:]))
  if (sh == sw == 1) or kh % sh or kw % sw:
    return jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                        dimension_numbers=dimension_numbers)
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  b, h, w, c = x.shape
  out_h, out_w = (h - kh) // sh + 1, (w - kw) // sw + 1
  # Blocks of the input: (b, h/sh, w/sw, sh*sw*c), phases (r, q, c) in order.
  bh, bw = -(-h // sh), -(-w // sw)
  x = jnp.pad(x, ((0, 0), (0, bh * sh - h), (0, bw * sw - w), (0, 0)))
  x = x.reshape(b, bh, sh, bw, sw, c).transpose(0, 1, 3, 2, 4, 5)
  x = x.reshape(b, bh, bw, sh * sw * c)
  # The kernel folded the same way: tap (a*sh + r, p*sw + q) -> (a, p, (r, q)).
  th, tw, features = kh // sh, kw // sw, kernel.shape[-1]
  kernel = kernel.reshape(th, sh, tw, sw, c, features).transpose(
      0, 2, 1, 3, 4, 5).reshape(th, tw, sh * sw * c, features)
  y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                   dimension_numbers=dimension_numbers)
  return y[:, :out_h, :out_w]


def _im2col_conv(x, kernel, strides, padding, out_shape):
  """The convolution as one matmul of the stacked taps (small maps only)."""
  (sh, sw), (kh, kw), (out_h, out_w) = strides, kernel.shape[:2], out_shape
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  # Tap (i, j) of every output pixel, stacked in the kernel's (i, j, c) order.
  taps = [x[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw]
          for i in range(kh) for j in range(kw)]
  patches = jnp.concatenate(taps, axis=-1)
  return patches @ kernel.reshape(-1, kernel.shape[-1])


def conv1d_same(x: Array, kernel: Array, groups: int) -> Array:
  """``lax.conv_general_dilated(x, kernel, (1,), "SAME",
  feature_group_count=groups)`` on (B, L, C) x [k, C/groups, F]; groups is
  1 or C (depthwise: output channel c * F/C + m reads input channel c)."""
  length, channels = x.shape[-2], x.shape[-1]
  kernel_size, features = kernel.shape[0], kernel.shape[-1]
  if groups not in (1, channels):
    raise ValueError(f"conv1d_same takes groups=1 or {channels}, not {groups}.")
  if groups > 1:  # Depthwise: repeat each input channel per output.
    x = jnp.repeat(x, features // channels, axis=-1)
  left = (kernel_size - 1) // 2  # 'SAME': the odd one out on the right.
  padded = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(length, length), (0, 0)])
  out = None
  # out[t] = sum_j x[t + j - left] * kernel[j], x zero outside [0, L).
  for tap in range(max(0, left - length + 1), min(kernel_size, left + length)):
    start = length + tap - left
    window = padded[..., start:start + length, :]
    term = window * kernel[tap, 0] if groups > 1 else window @ kernel[tap]
    out = term if out is None else out + term
  return out


def map_in_chunks(fn: Callable[[Any], Any], x: Any, chunk_size: int) -> Any:
  """``fn(x)`` for a per-example ``fn``, computed ``chunk_size`` rows at a time.

  Each chunk's activations are recomputed in the backward pass instead of
  stored (``jax.checkpoint``): one more forward pass in FLOPs, but each
  chunk's backward pass then finds its arrays in cache. Without chunking
  (``chunk_size`` 0, or a batch it does not split evenly) this is ``fn(x)``.

  ``x`` is an array or a pytree of arrays with the same leading batch axis
  (e.g. images and per-example stochastic-depth masks); every leaf is
  chunked the same way, so row r of each reaches ``fn`` together.
  Chunk j holds rows j, j + n, j + 2n, ... (n chunks): a batch sharded over
  devices in contiguous blocks then gives every chunk the same sharding,
  and the loop runs over an unsharded axis. ``fn`` must treat rows
  independently (no batch statistics) and return arrays with a leading
  batch axis.
  """
  batch = jax.tree.leaves(x)[0].shape[0]
  if not chunk_size or batch <= chunk_size or batch % chunk_size:
    return fn(x)
  num_chunks = batch // chunk_size
  chunks = jax.tree.map(
      lambda a: a.reshape(chunk_size, num_chunks, *a.shape[1:]).swapaxes(0, 1),
      x)
  outputs = jax.lax.map(jax.checkpoint(fn, prevent_cse=False), chunks)
  return jax.tree.map(
      lambda y: y.swapaxes(0, 1).reshape(batch, *y.shape[2:]), outputs)



# --------------------------------------------------------------------------
# Seed 004's conv-ViT trunk (jaxattn.models.conv_vit.model), reassociated.
# --------------------------------------------------------------------------


def conv_vit_trunk(params: Any, images: Array,
                   drop_scales: list[Array | None], *, head_channels: int,
                   dtype: Any, chunk_size: int, record: bool
                   ) -> tuple[Array, list[Array]]:
  """``ConvViT``'s embedding and blocks: (B, H, W, C) images -> (B, N, D).

  ``params``: the model's parameters (``embedding``, ``layers_{i}``);
  ``drop_scales``: per block, None or the (B, 2) stochastic-depth
  multipliers of its two branches. Returns the tokens, row-major over the
  patch grid, and each block's (B, heads, i, j) attention if ``record``
  (else []). The batch runs in chunks of ``chunk_size`` images (0: whole;
  ``map_in_chunks``), each with its rows of ``drop_scales``.

  The model's modules computed another way (profile of seed 004's step,
  ``benchmarks/README.md``). The seed's attention only mixes channels, so a
  block's attention branch is a per-image linear map of its input:

  * the scores ``sum_n q_n k_n^T`` are ``Wq^T G Wk`` (plus bias terms) with
    ``G = sum_n y_n y_n^T``, the (D x D) Gram matrix of the normalised input
    y: one pass over the activations instead of three projections;
  * the output ``unify(blockdiag(A) v)`` is ``y @ P + c`` with the
    per-image ``P = Wv blockdiag(A)^T Wunify``, so q, k, v and the attention
    output are never materialised;
  * each LayerNorm's scale and bias are folded into the (tiny) matrices of
    the linear map that follows it, so only the normalisation
    (``layer_norm_no_affine``) touches activations;
  * the patch conv (kernel = stride = p) is a reshape and one ``dense``.
  """
  depth = len(drop_scales)
  p, _, c, d = params["embedding"]["patch"]["kernel"].shape
  grid = params["embedding"]["pos_embedding"].shape[:2]
  if images.shape[1:] != (grid[0] * p, grid[1] * p, c):
    # What Flax's parameter-shape check says for the modules.
    raise ValueError(
        f"conv_vit's parameters are for {grid[0] * p}x{grid[1] * p}x{c} "
        f"images (the positional embedding's grid), not "
        f"{'x'.join(map(str, images.shape[1:]))}.")

  def trunk(chunk):
    chunk_images, chunk_scales = chunk
    x = _conv_vit_embed(params["embedding"], chunk_images, dtype)
    attentions = []
    for i, scales in zip(range(depth), chunk_scales):
      x, attention = _conv_vit_block(params[f"layers_{i}"], x, head_channels,
                                     dtype, scales)
      attentions.append(attention)
    return x, (attentions if record else [])

  return map_in_chunks(trunk, (images, drop_scales), chunk_size)


def _conv_vit_embed(params: Any, images: Array, dtype) -> Array:
  """(B, H, W, C) -> (B, N, D) tokens, row-major over the patch grid."""
  kernel, bias = params["patch"]["kernel"], params["patch"]["bias"]
  p, _, c, d = kernel.shape
  b, h, w, _ = images.shape
  patches = images.reshape(b, h // p, p, w // p, p, c).transpose(
      0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p), p * p * c)
  tokens = dense(patches.astype(dtype), kernel.reshape(p * p * c, d), bias)
  return tokens + params["pos_embedding"].reshape(-1, d).astype(dtype)


def _with_bias_row(kernel: Array, bias: Array) -> Array:
  """[[kernel], [bias]]: ``[x, 1] @ it == x @ kernel + bias``."""
  return jnp.concatenate([kernel, bias[None, :]], axis=0)


def _conv_vit_attention(norm: Any, params: Any, xhat: Array,
                        head_channels: int, dtype) -> tuple[Array, Array]:
  """``attn(xhat * scale + bias)`` for the LayerNorm's ``norm`` parameters
  and the attention's ``params`` (q, k, v, unify_heads).

  ``xhat`` is (B, N, D); returns the branch output of the same shape and
  the attention (B, heads, i, j).
  """
  b, n, d = xhat.shape
  heads = d // head_channels
  f32 = jnp.float32
  scale, shift = norm["scale"], norm["bias"]

  def folded(name):  # y @ W + b == [xhat, 1] @ [[scale * W], [shift @ W + b]]
    kernel, bias = params[name]["kernel"], params[name]["bias"]
    return _with_bias_row(scale[:, None] * kernel, shift @ kernel + bias)

  q, k, v = folded("q"), folded("k"), folded("v")  # (D+1, D) each
  # sum_n [xhat_n, 1][xhat_n, 1]^T: the Gram matrix, bordered by the sums.
  gram = jnp.einsum("bni,bnj->bij", xhat, xhat, preferred_element_type=f32)
  sums = jnp.sum(xhat, axis=1, dtype=f32)
  bordered = jnp.concatenate([
      jnp.concatenate([gram, sums[:, :, None]], axis=2),
      jnp.concatenate([sums[:, None, :], jnp.full((b, 1, 1), n, f32)], axis=2),
  ], axis=1)
  # All scores sum_n q_n k_n^T (D x D); each head's block is its (i, j).
  scores = jnp.einsum("di,bde,ej->bij", q, bordered, k)
  scores = jnp.einsum("bhihj->bhij", scores.reshape(
      b, heads, head_channels, heads, head_channels)) * head_channels**-0.5
  attention = jax.nn.softmax(scores, axis=-2)  # The seed's dim=-2.
  # out_n = blockdiag(A) v_n, i.e. v @ M^T with M^T[(h, j), (h, i)] = A[h, i, j].
  mixing_t = jnp.einsum("bhij,hg->bhjgi", attention,
                        jnp.eye(heads, dtype=f32)).reshape(b, d, d)
  unify_kernel = params["unify_heads"]["kernel"]
  unify_bias = params["unify_heads"]["bias"]
  projection = jnp.einsum("de,bef,fg->bdg", v, mixing_t, unify_kernel)
  # Accumulated in float32: bf16 x bf16 -> f32 dots, one rounding at the end.
  out = jnp.einsum("bnd,bdg->bng", xhat, projection[:, :d].astype(dtype),
                   preferred_element_type=f32)
  offset = projection[:, d] + unify_bias
  return (out + offset[:, None, :]).astype(dtype), attention


def _conv_vit_feed_forward(norm: Any, params: Any, xhat: Array,
                           dtype) -> Array:
  """``fc2(gelu(fc1(xhat * scale + bias)))``, the affine folded into fc1."""
  scale, shift = norm["scale"], norm["bias"]
  fc1, fc2 = params["fc1"], params["fc2"]
  hidden = dense(xhat.astype(dtype), scale[:, None] * fc1["kernel"],
                 shift @ fc1["kernel"] + fc1["bias"])
  return dense(gelu(hidden), fc2["kernel"], fc2["bias"])


def _conv_vit_block(params: Any, x: Array, head_channels: int, dtype,
                    drop_scales: Array | None) -> tuple[Array, Array]:
  """``ConvViTBlock`` on (B, N, D) tokens; also returns the attention."""
  # layers imports the kernel layer, which imports this module.
  from jaxattn.models import layers  # pylint: disable=g-import-not-at-top
  attn_scale, ff_scale = ((None, None) if drop_scales is None else
                          (drop_scales[:, 0], drop_scales[:, 1]))
  branch, attention = _conv_vit_attention(
      params["attn_norm"], params["attn"], layer_norm_no_affine(x),
      head_channels, dtype)
  x = layers.drop_path(branch, attn_scale) + x
  branch = _conv_vit_feed_forward(params["ff_norm"], params["ff"],
                                  layer_norm_no_affine(x), dtype)
  return layers.drop_path(branch, ff_scale) + x, attention
