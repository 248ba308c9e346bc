"""The kernel layer: how a handful of ops are computed, chosen in one place.

The models are written with plain ops: a Linear is ``x @ kernel + bias``, a
BatchNorm is Flax's, a strided convolution is ``lax.conv_general_dilated``,
attention is ``jax.nn.dot_product_attention``. That is what a reader holds
against a seed's code, and what a GPU or TPU compiles best. On the CPU, some
of those ops run faster as the rewrites of ``cpu_kernels`` (custom gradients,
sums as ones-vector products, space-to-depth convolutions, batches in
cache-sized chunks), each measured on XLA:CPU and equal to the plain op up to
float rounding. This module decides which set a step compiles:

* ``"plain"``: the ops as written;
* ``"cpu"``: the XLA:CPU rewrites;
* ``"auto"`` (``config.kernels``' default): ``"cpu"`` when the step is
  compiled for the CPU, ``"plain"`` for any other platform.

The choice is made from the platform the step is compiled for, not the host
it is traced on (a CUDA export traced on a CPU host gets the plain ops), and
is active while the step's function is traced (:func:`traced_with`). Outside
a step (``model.apply`` in a notebook, predict, export) the plain ops run.

Attention is chosen here too (:func:`attention_implementation`): cuDNN's
fused kernel when the step is compiled for a CUDA GPU that is attached, with
bfloat16/float16 inputs, no mask and a head size cuDNN takes; XLA's
otherwise.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp

from jaxattn.configlib import ConfigError
from jaxattn.models import cpu_kernels

Array = jax.Array

CHOICES = ("auto", "plain", "cpu")
# Rows per chunk of conv_vit's batch under the CPU kernels (cpu_kernels.
# map_in_chunks): measured best on 2-core Sapphire Rapids and EPYC hosts.
CPU_CHUNK_SIZE = 8
# cuDNN flash attention: bf16/fp16, head dims that are multiples of 8 up to
# 128 (256 on Hopper and later; 128 is safe everywhere).
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
CUDNN_MAX_HEAD_DIM = 128


@dataclasses.dataclass(frozen=True)
class Kernels:
  """The kernel set a step is traced with.

  ``name``: "plain" or "cpu"; ``platform``: the platform the step is
  compiled for ("cpu", "cuda", "rocm", "tpu"), or None when unknown.
  """

  name: str = "plain"
  platform: str | None = None

  @property
  def cpu(self) -> bool:
    return self.name == "cpu"

  def describe(self) -> str:
    where = self.platform or "an unknown platform"
    if self.cpu:
      return f"kernels: cpu (XLA:CPU rewrites; the step is compiled for {where})"
    return f"kernels: plain (the models' own ops; compiled for {where})"


PLAIN = Kernels()


def resolve(requested: str, platform: str) -> Kernels:
  """``config.kernels`` for a step compiled for ``platform``."""
  if requested not in CHOICES:
    raise ConfigError(
        f"config.kernels={requested!r} is not one of {', '.join(CHOICES)}: "
        "'auto' (the XLA:CPU rewrites only where the step is compiled for the "
        "CPU), 'plain' (the models' own ops everywhere) or 'cpu' (the "
        "rewrites everywhere; only the CPU gains from them).")
  platform = normalize_platform(platform)
  if requested == "auto":
    requested = "cpu" if platform == "cpu" else "plain"
  return Kernels(requested, platform)


def normalize_platform(platform: str) -> str:
  """jax.Device.platform ("gpu") or an export platform ("cuda"): one name."""
  platform = platform.lower()
  return "cuda" if platform == "gpu" else platform


def platform_of(mesh: jax.sharding.Mesh) -> str:
  """The platform a step over ``mesh`` is compiled for."""
  device = mesh.devices.flat[0]
  if device.platform == "gpu":  # jax says "gpu" for both CUDA and ROCm.
    version = getattr(getattr(device, "client", None), "platform_version", "")
    return "rocm" if "rocm" in str(version).lower() else "cuda"
  return device.platform


_ACTIVE: contextvars.ContextVar[Kernels] = contextvars.ContextVar(
    "jaxattn_kernels", default=PLAIN)


def active() -> Kernels:
  """The kernel set of the function being traced (plain outside a step)."""
  return _ACTIVE.get()


@contextlib.contextmanager
def use(kernels: Kernels) -> Iterator[Kernels]:
  """Trace with ``kernels`` inside the ``with`` block.

  jit's cache does not see this choice: a jitted function traced before
  keeps its first trace. Wrap the function itself (:func:`traced_with`).
  """
  token = _ACTIVE.set(kernels)
  try:
    yield kernels
  finally:
    _ACTIVE.reset(token)


def traced_with(kernels: Kernels, fn: Callable[..., Any]) -> Callable[..., Any]:
  """``fn`` that traces its body with ``kernels`` active: wrap a step before
  ``jax.jit`` so the choice holds on every (re)trace."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with use(kernels):
      return fn(*args, **kwargs)

  return wrapped


# --------------------------------------------------------------------------
# The ops. Each takes and returns what the plain expression does.
# --------------------------------------------------------------------------


def dense(x: Array, kernel: Array, bias: Array | None = None) -> Array:
  """``x @ kernel + bias`` in x's dtype (``nn.Dense``'s computation)."""
  if active().cpu:
    return cpu_kernels.dense(x, kernel, bias)
  y = jnp.matmul(x, kernel.astype(x.dtype))
  return y if bias is None else y + bias.astype(x.dtype)


def conv2d(x: Array, kernel: Array, strides: tuple[int, int],
           padding: tuple[tuple[int, int], tuple[int, int]]) -> Array:
  """``lax.conv_general_dilated`` on NHWC maps and HWIO kernels."""
  if active().cpu:
    return cpu_kernels.conv2d(x, kernel, strides, padding)
  return jax.lax.conv_general_dilated(
      x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def batch_norm(x: Array, scale: Array, bias: Array,
               epsilon: float) -> tuple[Array, Array, Array]:
  """Training-mode BatchNorm over all axes but the last: ``(y, mean, var)``.

  ``nn.BatchNorm``'s computation: float32 statistics, ``var = E[x^2] -
  E[x]^2`` clipped at 0, ``y = (x - mean) * rsqrt(var + eps) * scale + bias``
  in x's dtype; mean and var are for the running averages.
  """
  if active().cpu:
    return cpu_kernels.batch_norm(x, scale, bias, epsilon)
  axes = tuple(range(x.ndim - 1))
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axes)
  var = jnp.maximum(0.0, jnp.mean(jnp.square(xf), axes) - jnp.square(mean))
  y = (xf - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias
  return y.astype(x.dtype), mean, var


def conv1d_same(x: Array, kernel: Array, groups: int) -> Array:
  """``nn.Conv(padding="SAME", feature_group_count=groups)``'s convolution of
  (B, L, C) sequences with a [k, C/groups, F] kernel (no bias)."""
  if active().cpu:
    return cpu_kernels.conv1d_same(x, kernel, groups)
  return jax.lax.conv_general_dilated(
      x, kernel, (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"),
      feature_group_count=groups)


def gelu(x: Array) -> Array:
  """``torch.nn.GELU()``, the exact (erf) form."""
  if active().cpu:
    return cpu_kernels.gelu(x)
  return jax.nn.gelu(x, approximate=False)


def layer_norm_no_affine(x: Array) -> Array:
  """``(x - mean) / sqrt(var + 1e-5)`` over the last axis, PyTorch's
  two-pass variance, statistics in float32; returned in x's dtype."""
  if active().cpu:
    return cpu_kernels.layer_norm_no_affine(x)
  xf = x.astype(jnp.float32)
  centred = xf - jnp.mean(xf, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
  return (centred * jax.lax.rsqrt(var + cpu_kernels.LAYER_NORM_EPS)
          ).astype(x.dtype)


def max_pool_3x3_s2(x: Array) -> Array:
  """``MaxPool2d(3, stride=2, padding=1)`` on NHWC maps; the padding is -inf,
  so it never wins a window (PyTorch's semantics)."""
  if active().cpu:
    return cpu_kernels.max_pool_3x3_s2(x)
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1),
                               (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))


def map_in_chunks(fn: Callable[[Any], Any], x: Any,
                  chunk_size: int | None = None) -> Any:
  """``fn(x)`` for a per-example ``fn``; under the CPU kernels, computed
  ``chunk_size`` rows at a time (None: ``CPU_CHUNK_SIZE``; 0: whole), each
  chunk recomputed in the backward pass (``cpu_kernels.map_in_chunks``)."""
  if not active().cpu:
    return fn(x)
  return cpu_kernels.map_in_chunks(
      fn, x, CPU_CHUNK_SIZE if chunk_size is None else chunk_size)


def conv_vit_trunk(params: Any, images: Array,
                   drop_scales: list[Array | None], *, head_channels: int,
                   dtype: Any, chunk_size: int | None, record: bool
                   ) -> tuple[Array, list[Array]]:
  """Seed 004's embedding and blocks as one CPU kernel: the (B, N, D) tokens
  and, if ``record``, each block's attention (``cpu_kernels.conv_vit_trunk``;
  ``chunk_size`` None: ``CPU_CHUNK_SIZE``, 0: whole).

  Under the CPU kernels only: the plain form is the model's own modules
  (``jaxattn.models.conv_vit.model``), which call this where ``active().cpu``.
  """
  if not active().cpu:
    raise ValueError("conv_vit_trunk is the CPU kernels' form of conv_vit's "
                     "modules; under the plain kernels apply the modules.")
  return cpu_kernels.conv_vit_trunk(
      params, images, drop_scales, head_channels=head_channels, dtype=dtype,
      chunk_size=CPU_CHUNK_SIZE if chunk_size is None else chunk_size,
      record=record)


def attention_implementation(platform: str | None, dtype: Any, head_dim: int,
                             *, masked: bool = False,
                             gpu_attached: bool | None = None) -> str:
  """"cudnn" or "xla": ``jax.nn.dot_product_attention``'s implementation.

  cuDNN's fused (flash) kernel needs a CUDA GPU at trace time, bf16/fp16
  inputs and a head size that is a multiple of 8 up to 128; masks go to XLA
  (cuDNN's mask support is narrower than XLA's). ``gpu_attached``: whether
  a CUDA device is present (None: ask JAX).
  """
  if platform is None or normalize_platform(platform) != "cuda":
    return "xla"
  if masked or jnp.dtype(dtype) not in [jnp.dtype(d) for d in CUDNN_DTYPES]:
    return "xla"
  if head_dim % 8 or head_dim > CUDNN_MAX_HEAD_DIM:
    return "xla"
  if gpu_attached is None:
    gpu_attached = any(d.platform == "gpu" for d in jax.devices())
  return "cudnn" if gpu_attached else "xla"


def attention(query: Array, key: Array, value: Array, *,
              mask: Array | None = None, scale: float | None = None) -> Array:
  """``softmax(q k^T * scale) v`` over (B, N, heads, head_dim) inputs
  (scale: 1/sqrt(head_dim) when None), by ``jax.nn.dot_product_attention``
  with the implementation :func:`attention_implementation` picks."""
  implementation = attention_implementation(
      active().platform, query.dtype, query.shape[-1], masked=mask is not None)
  if implementation == "cudnn":
    try:
      return jax.nn.dot_product_attention(query, key, value, scale=scale,
                                          implementation="cudnn")
    except NotImplementedError:  # A shape this cuDNN build does not take.
      pass
  return jax.nn.dot_product_attention(query, key, value, mask=mask,
                                      scale=scale, implementation="xla")
