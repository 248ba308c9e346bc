"""The transformer pieces the ViT models share.

* ``MultiHeadSelfAttention``: the project's one multi-head self-attention:
  q, k, v projections -> ``kernels.attention`` -> output projection. Its
  parameters come in two layouts (``per_head_params``), so one computation
  serves PyTorch-ported models and published vit_jax checkpoints:

  - flat (default): ``{query,key,value,out}/kernel [D,D]``, ``bias [D]``, a
    ``torch.nn.Linear`` each (seed 002's ``nn.MultiheadAttention`` with its
    in_proj split in three, seed 003's blocks);
  - per head (``per_head_params=True``): Flax's
    ``nn.MultiHeadDotProductAttention`` layout, the one vit_jax / big_vision
    checkpoints store: ``{query,key,value}/kernel [D,H,D/H]``, ``bias
    [H,D/H]``, ``out/kernel [H,D/H,D]``, ``out/bias [D]``.

  Both compute ``x @ kernel + bias`` on the same numbers: a per-head kernel
  is the flat one reshaped (head h owns features h*D/H .. (h+1)*D/H - 1, as
  in PyTorch). The initialisers are fields; the presets ``TORCH_LINEAR``
  (the default), ``TORCH_MULTIHEAD`` and ``VIT_JAX`` hold each source's
  (``VIT_JAX`` its per-head layout too).
* ``MlpBlock``: Linear -> activation -> Linear, names, activation and
  initialisers as fields.
* The two encoder-block designs, each as its source wrote it:
  ``Seed002EncoderBlock`` (``x = LN(x); x = MHA(x) + x; x = MLP(x) + x``)
  and ``VitJaxEncoderBlock`` (pre-norm, vit_jax's ``Encoder1DBlock`` with
  its checkpoint names).
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxattn.configlib import ConfigError
from jaxattn.models import kernels, layers

Array = jax.Array
Initializer = Callable[..., Array]
# A bias initialiser as layers.Linear takes it: fan_in -> initializer.
BiasInit = Callable[[int], Initializer]

# torch.nn.MultiheadAttention: xavier_uniform_ on the fused [3D, D]
# in_proj_weight, bound sqrt(6 / 4D). On one [D, D] slice, fan_avg is D, so
# scale 1/2 gives sqrt(3 * 0.5 / D).
torch_in_proj_init = nn.initializers.variance_scaling(0.5, "fan_avg",
                                                      "uniform")


def constant_bias_init(init: Initializer) -> BiasInit:
  """A ``BiasInit`` that ignores the fan-in (vit_jax's biases)."""
  return lambda fan_in: init


# Initialisers of MultiHeadSelfAttention, per source (pass as **kwargs).
# torch.nn.Linear's default for all four projections (seed 003's blocks).
TORCH_LINEAR = dict(qkv_kernel_init=layers.kernel_init,
                    qkv_bias_init=layers.bias_init,
                    out_kernel_init=layers.kernel_init,
                    out_bias_init=layers.bias_init)
# torch.nn.MultiheadAttention (seed 002): in_proj as above with zero bias;
# out_proj keeps the Linear-default weight but its bias is zeroed.
TORCH_MULTIHEAD = dict(qkv_kernel_init=torch_in_proj_init,
                       qkv_bias_init=layers.zeros_bias,
                       out_kernel_init=layers.kernel_init,
                       out_bias_init=layers.zeros_bias)
# vit_jax's Encoder1DBlock: nn.MultiHeadDotProductAttention with
# xavier-uniform kernels and zero biases, in the per-head layout.
VIT_JAX = dict(per_head_params=True,
               qkv_kernel_init=nn.initializers.xavier_uniform(),
               qkv_bias_init=layers.zeros_bias,
               out_kernel_init=nn.initializers.xavier_uniform(),
               out_bias_init=layers.zeros_bias)


def _split(size: int, heads: int | None) -> tuple[int, ...]:
  return (size,) if heads is None else (heads, size // heads)


def _init_flat(init: Initializer, flat_shape: tuple[int, ...]) -> Initializer:
  """``init`` drawn at ``flat_shape`` and reshaped to the stored shape, as
  ``nn.DenseGeneral`` initialises its kernels and biases: either layout gets
  the same values (and the same fans) from one key."""

  def wrapped(key, shape, dtype=jnp.float32):
    value = init(key, flat_shape, dtype)
    return value if value.shape == tuple(shape) else value.reshape(shape)

  return wrapped


class Projection(nn.Module):
  """``layers.Linear(features)`` whose parameters may be stored per head.

  Computes ``x @ kernel + bias`` over x's last axis by ``kernels.dense``,
  with the [fan_in, features] kernel and [features] bias stored as is, or
  with the input side (``in_heads``) or the output side (``out_heads``)
  split into [heads, size / heads] (``nn.DenseGeneral``'s layout for
  attention; the output then ends in (heads, features / heads)).
  """

  features: int
  dtype: Any = jnp.float32
  kernel_init: Initializer = layers.kernel_init
  bias_init: BiasInit = layers.bias_init
  in_heads: int | None = None
  out_heads: int | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    fan_in, features = x.shape[-1], self.features
    kernel_shape = (_split(fan_in, self.in_heads) +
                    _split(features, self.out_heads))
    bias_shape = _split(features, self.out_heads)
    kernel = self.param("kernel",
                        _init_flat(self.kernel_init, (fan_in, features)),
                        kernel_shape, jnp.float32)
    bias = self.param("bias",
                      _init_flat(self.bias_init(fan_in), (features,)),
                      bias_shape, jnp.float32)
    y = kernels.dense(x.astype(self.dtype),
                      kernel.reshape(fan_in, features), bias.reshape(features))
    return y.reshape(*y.shape[:-1], *bias_shape)


class MultiHeadSelfAttention(nn.Module):
  """Multi-head self-attention over tokens: (B, N, D) -> (B, N, D).

  ``query``, ``key``, ``value`` and ``out`` are ``Projection`` s (D -> D,
  with bias), stored flat or, with ``per_head_params``, in
  ``nn.MultiHeadDotProductAttention``'s per-head layout (module docstring).
  Scores are scaled by 1/sqrt(D/heads) and softmaxed over the keys by
  ``kernels.attention`` (``jax.nn.dot_product_attention``: float32 scores
  and softmax under bfloat16; cuDNN's fused kernel where it applies). No
  dropout: no model here trains with attention dropout.

  Initialisers: PyTorch's Linear default unless given; see the presets
  ``TORCH_LINEAR``, ``TORCH_MULTIHEAD``, ``VIT_JAX``.

  Flax names <- ``torch.nn.MultiheadAttention``: ``{query,key,value}/kernel
  <- in_proj_weight[{0,1,2}*D:(+1)*D].T`` (biases likewise), ``out <-
  out_proj``.
  """

  num_heads: int
  dtype: Any = jnp.float32
  per_head_params: bool = False
  qkv_kernel_init: Initializer = layers.kernel_init
  qkv_bias_init: BiasInit = layers.bias_init
  out_kernel_init: Initializer = layers.kernel_init
  out_bias_init: BiasInit = layers.bias_init

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if x.ndim != 3:
      raise ValueError(
          f"MultiHeadSelfAttention expects tokens of shape (batch, tokens, "
          f"features), got shape {tuple(x.shape)}.")
    b, n, d = x.shape
    if self.num_heads < 1 or d % self.num_heads:
      raise ConfigError(
          f"Feature dimension {d} (hidden_dim) is not divisible by num_heads="
          f"{self.num_heads}; pick num_heads among the divisors of {d}.")
    head_dim = d // self.num_heads
    heads = self.num_heads if self.per_head_params else None

    def project(name):
      y = Projection(d, self.dtype, self.qkv_kernel_init, self.qkv_bias_init,
                     out_heads=heads, name=name)(x)
      return y.reshape(b, n, self.num_heads, head_dim)

    q, k, v = project("query"), project("key"), project("value")
    out = kernels.attention(q, k, v, scale=head_dim**-0.5)
    return Projection(d, self.dtype, self.out_kernel_init, self.out_bias_init,
                      in_heads=heads, name="out")(out.reshape(b, n, d))


class MlpBlock(nn.Module):
  """Linear(D, mlp_dim) -> activation -> Linear(mlp_dim, D); no dropout.

  Defaults are PyTorch's (``fc1``/``fc2``, exact GELU, Linear-default init);
  vit_jax's block passes its own (``VitJaxEncoderBlock``).
  """

  mlp_dim: int
  dtype: Any = jnp.float32
  names: tuple[str, str] = ("fc1", "fc2")
  activation: Callable[[Array], Array] = kernels.gelu
  kernel_init: Initializer = layers.kernel_init
  bias_init: BiasInit = layers.bias_init

  @nn.compact
  def __call__(self, x: Array) -> Array:
    dense = lambda features, name: layers.Linear(
        features, self.dtype, kernel_init=self.kernel_init,
        bias_init=self.bias_init, name=name)
    y = self.activation(dense(self.mlp_dim, self.names[0])(x))
    return dense(x.shape[-1], self.names[1])(y)


class Seed002EncoderBlock(nn.Module):
  """Seed 002's block: ``x = LN(x); x = MHA(x) + x; x = MLP(x) + x``.

  PyTorch numerics (LayerNorm eps 1e-5, exact GELU) and
  ``nn.MultiheadAttention``'s init (``TORCH_MULTIHEAD``); children
  ``layer_norm``, ``self_attention``, ``mlp_block`` (fc1, fc2), the seed's
  attribute names.

  ``drop_scales``: None, or the (B, 2) stochastic-depth multipliers of the
  attention and MLP branches (``layers.drop_path_scales``).
  """

  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, drop_scales: Array | None = None) -> Array:
    attn_scale, mlp_scale = ((None, None) if drop_scales is None else
                             (drop_scales[:, 0], drop_scales[:, 1]))
    # Not pre-norm: the normalised x replaces the stream, and it is what the
    # attention residual adds back. Reproduced as the seed wrote it.
    x = layers.layer_norm("layer_norm", self.dtype)(x)
    x = layers.drop_path(MultiHeadSelfAttention(
        self.num_heads, self.dtype, **TORCH_MULTIHEAD,
        name="self_attention")(x), attn_scale) + x
    return layers.drop_path(MlpBlock(self.mlp_dim, self.dtype,
                                     name="mlp_block")(x), mlp_scale) + x


class VitJaxEncoderBlock(nn.Module):
  """vit_jax's ``Encoder1DBlock``: ``x + MHA(LN(x))``, then ``x + MLP(LN(x))``.

  vit_jax numerics: LayerNorm eps 1e-6, tanh-approximate GELU (Flax's
  default ``nn.gelu``), no dropout. Initialisation as vit_jax: attention
  ``VIT_JAX``; MLP xavier-uniform kernels, biases ~ N(0, 1e-6).

  The child names are the ones in the published checkpoints (written by an
  old Flax whose auto-naming counter was shared across layer types), not what
  today's auto-naming would produce: ``LayerNorm_0``,
  ``MultiHeadDotProductAttention_1``, ``LayerNorm_2``, ``MlpBlock_3``
  (``Dense_0``, ``Dense_1``).
  """

  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    layer_norm = lambda name: nn.LayerNorm(
        epsilon=1e-6, dtype=self.dtype, param_dtype=jnp.float32, name=name)
    y = layer_norm("LayerNorm_0")(x)
    y = MultiHeadSelfAttention(self.num_heads, self.dtype, **VIT_JAX,
                               name="MultiHeadDotProductAttention_1")(y)
    x = x + y
    y = layer_norm("LayerNorm_2")(x)
    return x + MlpBlock(
        self.mlp_dim, self.dtype, names=("Dense_0", "Dense_1"),
        activation=nn.gelu, kernel_init=nn.initializers.xavier_uniform(),
        bias_init=constant_bias_init(nn.initializers.normal(stddev=1e-6)),
        name="MlpBlock_3")(y)
