"""Custom-gradient building blocks that XLA:CPU runs faster than autodiff's.

Each function equals the plain expression in its docstring (the same values
up to float rounding, exact gradients); only what XLA computes, stores and
transposes changes. Each rule below came out of a profile of seed 004's
train step (``benchmarks/README.md``):

* ``gelu``: PyTorch's exact GELU, ``0.5 x (1 + erf(x / sqrt 2))``.
  ``jax.nn.gelu(approximate=False)`` goes through ``erfc`` (two exp/select
  passes forward), and autodiff saved ``erf`` for the backward pass; here the
  forward is one fused pass and the backward one more, from ``x`` alone.
* ``normalize``: LayerNorm without its affine part, with PyTorch's numerics
  (two-pass variance, eps inside the root). The backward pass is the closed
  form ``rstd * (g - mean(g) - xhat * mean(g * xhat))`` in one fused pass.
  Callers fold the affine part into the next linear map where they can.
* ``dense``: ``x @ kernel + bias`` whose weight gradient contracts an
  explicitly transposed copy of the narrower operand. Autodiff's form made
  XLA transpose the wider operand and fall back to a slow generic dot.
* ``map_in_chunks``: runs a per-example function over slices of the batch,
  each recomputed in the backward pass (``jax.checkpoint``), so a chunk's
  forward and backward both work on cache-sized arrays; a whole batch of
  seed 004's activations (16 MiB per hidden layer at batch 128) does not fit
  in a CPU core's 2 MiB L2.

Every function computes in float32 and returns the input's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default.


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
def normalize(x: Array) -> Array:
  """``(x - mean) / sqrt(var + 1e-5)`` over the last axis (biased variance)."""
  return _normalize_fwd(x)[0]


def _normalize_fwd(x):
  xf = x.astype(jnp.float32)
  centred = xf - jnp.mean(xf, axis=-1, keepdims=True)
  rstd = jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) +
                       LAYER_NORM_EPS)
  xhat = (centred * rstd).astype(x.dtype)
  return xhat, (xhat, rstd)


def _normalize_bwd(residuals, g):
  xhat, rstd = residuals
  gf, xf = g.astype(jnp.float32), xhat.astype(jnp.float32)
  dx = rstd * (gf - jnp.mean(gf, axis=-1, keepdims=True) -
               xf * jnp.mean(gf * xf, axis=-1, keepdims=True))
  return (dx.astype(g.dtype),)


normalize.defvjp(_normalize_fwd, _normalize_bwd)


@jax.custom_vjp
def dense(x: Array, kernel: Array, bias: Array) -> Array:
  """``x @ kernel + bias`` over the last axis of x, in x's dtype.

  ``kernel`` [in, out] and ``bias`` [out] are the float32 parameters; their
  gradients come back in float32 (accumulated in float32 under bfloat16).
  """
  return x @ kernel.astype(x.dtype) + bias.astype(x.dtype)


def _dense_fwd(x, kernel, bias):
  return dense(x, kernel, bias), (x, kernel)


def _dense_bwd(residuals, dy):
  x, kernel = residuals
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
  dx = dy @ kernel.T.astype(dy.dtype)
  dbias = jnp.sum(rows_dy, axis=0, dtype=f32)
  return dx, dkernel.astype(kernel.dtype), dbias.astype(kernel.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


def map_in_chunks(fn: Callable[[Array], Any], x: Array,
                  chunk_size: int) -> Any:
  """``fn(x)`` for a per-example ``fn``, computed ``chunk_size`` rows at a time.

  Each chunk's activations are recomputed in the backward pass instead of
  stored (``jax.checkpoint``): one more forward pass in FLOPs, but each
  chunk's backward pass then finds its arrays in cache. Without chunking
  (``chunk_size`` 0, or a batch it does not split evenly) this is ``fn(x)``.

  Chunk j holds rows j, j + n, j + 2n, ... (n chunks): a batch sharded over
  devices in contiguous blocks then gives every chunk the same sharding,
  and the loop runs over an unsharded axis. ``fn`` must treat rows
  independently (no batch statistics) and return arrays with a leading
  batch axis.
  """
  batch = x.shape[0]
  if not chunk_size or batch <= chunk_size or batch % chunk_size:
    return fn(x)
  num_chunks = batch // chunk_size
  chunks = x.reshape(chunk_size, num_chunks, *x.shape[1:]).swapaxes(0, 1)
  outputs = jax.lax.map(jax.checkpoint(fn, prevent_cse=False), chunks)
  return jax.tree.map(
      lambda y: y.swapaxes(0, 1).reshape(batch, *y.shape[2:]), outputs)


def default_chunk_size() -> int:
  """8 rows per chunk on CPU (measured best); whole batches elsewhere.

  Accelerators want large matmuls and have no 2 MiB cache to stay within.
  """
  return 8 if jax.default_backend() == "cpu" else 0
