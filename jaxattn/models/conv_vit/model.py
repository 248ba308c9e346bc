"""Seed 004: the EVA-8 S10 fully-convolutional ViT (CIFAR-10, 59,818 params).

The author's PyTorch model is channels-first and uses 1x1 convolutions where a
ViT has linear layers. Here everything runs channels-last (NHWC), so each 1x1
convolution is a Dense-layout linear layer over the channel axis, with no
transposes. The parameter names and their PyTorch counterparts are in
``layouts.py`` (the converter's rules); ``pytorch.py`` is the seed's model.

Seed quirks reproduced on purpose (see ``specs/seeds.md``, "Seed 004"):

* Attention is between *channels*, not tokens: per head an
  (head_channels x head_channels) score matrix whose dot products sum over all
  H*W positions, with no 1/N. No token ever attends to another token; spatial
  information enters only through the patch conv and the positional embedding.
* The softmax runs over the *query*-channel axis (``dim=-2`` in the seed), so
  each column of the attention matrix sums to 1, not each row.
* No class token (the seed has it commented out): the head is LayerNorm ->
  GELU -> global average pool -> Linear, GELU *before* the pool.
* PyTorch numerics: LayerNorm eps 1e-5, exact (erf) GELU, PyTorch-default
  Conv2d/Linear init, positional embedding ~ N(0, 1) (``torch.randn``).

The modules below compute that directly. On XLA:CPU (under the CPU kernels,
``kernels.active().cpu``) the embedding and the blocks are computed instead
by ``cpu_kernels.conv_vit_trunk``: the same function reassociated (each
attention branch from a per-image Gram matrix, the LayerNorms' affine parts
folded into the matrices that follow them, the batch in cache-sized chunks
in training), from the same parameters.

``drop_path_rate`` (default 0, as in the seed) adds stochastic depth in
training: each block's attention and feed-forward branch is skipped per
example, block i of L with probability ``drop_path_rate * i / (L - 1)``, as
timm does (``layers.drop_path_scales``). The masks are drawn for the whole
batch at once, so they do not depend on how the CPU kernel chunks it. It
creates no parameters.

The attention matrix of every layer is sown into the ``intermediates``
collection as ``layers_{i}/attn/attention`` with shape (B, heads, i, j); apply
with ``mutable=["intermediates"]`` to read it.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxattn.configlib import ConfigError
from jaxattn.models import kernels, layers

Array = jax.Array


class _LayerNorm(nn.Module):
  """``torch.nn.LayerNorm(D)`` over the last axis; statistics in float32."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    dim = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (dim,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (dim,), jnp.float32)
    x = kernels.layer_norm_no_affine(x.astype(self.dtype))
    return x * scale.astype(self.dtype) + bias.astype(self.dtype)


class Embedding(nn.Module):
  """Non-overlapping patch conv plus a learned (H/p, W/p, D) position map.

  The positional embedding's shape comes from the image size seen at init, as
  in the seed (built from ``image_size``); applying the model to another size
  fails with Flax's parameter-shape error. Returns the (B, H/p, W/p, D) map.
  """

  hidden_dim: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: Array) -> Array:
    p = self.patch_size
    x = layers.conv(self.hidden_dim, (p, p), p * p * images.shape[-1],
                    "patch", self.dtype, strides=(p, p))(images)
    pos = self.param("pos_embedding", nn.initializers.normal(stddev=1.0),
                     x.shape[1:], jnp.float32)
    return x + pos.astype(self.dtype)


class ChannelSelfAttention(nn.Module):
  """The seed's ``MhSelfAttention``: attention between the channels.

  q, k and v are 1x1 convs of the (normalised) map; channel c belongs to
  head c // head_channels (the seed's ``view(b, heads, head_channels, N)``).
  Per head, ``scores[i, j] = sum_n q[n, i] k[n, j] * head_channels**-0.5``
  over all positions n, softmax over i, ``out[n, i] = sum_j A[i, j]
  v[n, j]``, then ``unify_heads``. Takes (B, ..., D), returns that shape.
  """

  head_channels: int
  dtype: Any = jnp.float32

  def record(self, attention: Array) -> None:
    self.sow("intermediates", "attention", attention)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, d, c = x.shape[0], x.shape[-1], self.head_channels
    linear = lambda name: layers.Linear(d, self.dtype, name=name)
    split = lambda t: t.reshape(b, -1, d // c, c)  # (B, N, heads, c)
    q, k, v = (split(linear(name)(x)) for name in ("q", "k", "v"))
    scores = jnp.einsum("bnhi,bnhj->bhij", q, k,
                        preferred_element_type=jnp.float32) * c**-0.5
    # The seed's softmax(dim=-2): normalise over the query channel i, so each
    # column sums to 1. Kept for fidelity; a row softmax is the usual choice.
    attention = jax.nn.softmax(scores, axis=-2)
    self.record(attention)
    out = jnp.einsum("bhij,bnhj->bnhi", attention.astype(v.dtype), v)
    return linear("unify_heads")(out.reshape(x.shape))


class FeedForward(nn.Module):
  """1x1 conv D -> mlp_ratio*D, exact GELU, 1x1 conv back; no dropout."""

  mlp_ratio: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    dim = x.shape[-1]
    x = layers.Linear(self.mlp_ratio * dim, self.dtype, name="fc1")(x)
    return layers.Linear(dim, self.dtype, name="fc2")(kernels.gelu(x))


class ConvViTBlock(nn.Module):
  """Pre-norm residual block: ``x = attn(LN(x)) + x; x = ff(LN(x)) + x``.

  ``drop_scales``: None, or the (B, 2) stochastic-depth multipliers of the
  attention and feed-forward branches (``layers.drop_path_scales``).
  """

  head_channels: int
  mlp_ratio: int
  dtype: Any = jnp.float32

  def setup(self):
    self.attn_norm = _LayerNorm(self.dtype)
    self.attn = ChannelSelfAttention(self.head_channels, self.dtype)
    self.ff_norm = _LayerNorm(self.dtype)
    self.ff = FeedForward(self.mlp_ratio, self.dtype)

  def record(self, attention: Array) -> None:
    """Sows an attention computed outside the module (the CPU kernel's)
    where ``attn`` sows its own."""
    self.attn.record(attention)

  def __call__(self, x: Array, drop_scales: Array | None = None) -> Array:
    attn_scale, ff_scale = ((None, None) if drop_scales is None else
                            (drop_scales[:, 0], drop_scales[:, 1]))
    x = layers.drop_path(self.attn(self.attn_norm(x)), attn_scale) + x
    return layers.drop_path(self.ff(self.ff_norm(x)), ff_scale) + x


class ConvViT(nn.Module):
  """Seed 004's fully-convolutional ViT; defaults are the seed's settings.

  Takes NHWC float images, returns float32 logits (B, num_classes). ``dtype``
  is the compute dtype; parameters are always float32, and LayerNorm
  statistics, attention scores and softmax, the pool and the head run in
  float32.

  ``chunk_size``: under the CPU kernels with ``train=True``, images per
  chunk of the batch (see ``kernels.map_in_chunks``; a batch it does not
  divide runs whole). None picks ``kernels.CPU_CHUNK_SIZE``; 0 turns
  chunking off. The plain kernels (GPUs, TPUs) never chunk. With the batch
  sharded over D devices each chunk is split over them too. The outputs do
  not depend on it.

  ``drop_path_rate``: stochastic depth with ``train=True`` (module
  docstring); needs the ``"dropout"`` RNG stream when it is not 0.
  """

  num_classes: int = 10
  patch_size: int = 2
  hidden_dim: int = 32
  depth: int = 4
  head_channels: int = 8
  mlp_ratio: int = 4
  dtype: Any = jnp.float32
  chunk_size: int | None = None
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, images: Array, *, train: bool = False) -> Array:
    # The seed has no dropout or batch statistics: `train` switches
    # stochastic depth on (when drop_path_rate > 0) and, under the CPU
    # kernels, the chunked batch, which pays off in the backward pass.
    layers.check_images(images, self.patch_size)
    d, hc = self.hidden_dim, self.head_channels
    if d % hc:
      raise ConfigError(
          f"hidden_dim={d} is not a multiple of head_channels={hc}; the "
          f"seed splits the channels into hidden_dim // head_channels heads.")
    embedding = Embedding(d, self.patch_size, self.dtype, name="embedding")
    blocks = [ConvViTBlock(hc, self.mlp_ratio, self.dtype, name=f"layers_{i}")
              for i in range(self.depth)]
    b, h, w, _ = images.shape
    drop_scales = layers.drop_path_scales(self, b, self.drop_path_rate,
                                          self.depth, train=train)
    if kernels.active().cpu and not self.is_initializing():
      # The same function from the same parameters, reassociated for XLA:CPU
      # (the parameters exist only after init).
      x, attentions = kernels.conv_vit_trunk(
          self.variables["params"], images, drop_scales, head_channels=hc,
          dtype=self.dtype, chunk_size=self.chunk_size if train else 0,
          record=self.is_mutable_collection("intermediates"))
      for block, attention in zip(blocks, attentions):
        block.record(attention)
      x = x.reshape(b, h // self.patch_size, w // self.patch_size, d)
    else:
      x = embedding(images)
      for block, scales in zip(blocks, drop_scales):
        x = block(x, scales)
    x = _LayerNorm(self.dtype, name="norm")(x)
    x = kernels.gelu(x)  # The seed applies GELU before pooling.
    x = jnp.mean(x, axis=(1, 2), dtype=jnp.float32)
    # A float32 head keeps logits exact for the loss; it is D x K, tiny.
    return nn.Dense(self.num_classes, dtype=jnp.float32,
                    param_dtype=jnp.float32, kernel_init=layers.kernel_init,
                    bias_init=layers.bias_init(self.hidden_dim),
                    name="head")(x)
