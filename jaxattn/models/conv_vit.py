"""Seed 004: the EVA-8 S10 fully-convolutional ViT (CIFAR-10, 59,818 params).

The author's PyTorch model is channels-first and uses 1x1 convolutions where a
ViT has linear layers. Here everything runs channels-last (NHWC), so each 1x1
convolution is a Dense over the channel axis: the same matmul, no transposes.

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

Parameter names (Flax ``params/...`` <- PyTorch state_dict key, with the
``module.`` prefix stripped if the checkpoint came from DataParallel):

  embedding/patch/kernel [p,p,C,D]     <- embedding.patch.weight [D,C,p,p]
                                          .transpose(2, 3, 1, 0)
  embedding/patch/bias                 <- embedding.patch.bias
  embedding/pos_embedding [H/p,W/p,D]  <- embedding.pos_embedding [1,D,H/p,W/p]
                                          [0].transpose(1, 2, 0)
  layers_{i}/attn_norm/{scale,bias}    <- transformer.layers.{i}.0.lnorm.{weight,bias}
  layers_{i}/attn/{q,k,v,unify_heads}  <- transformer.layers.{i}.0.fn.{same name}
  layers_{i}/ff_norm/{scale,bias}      <- transformer.layers.{i}.1.lnorm.{weight,bias}
  layers_{i}/ff/fc1, layers_{i}/ff/fc2 <- transformer.layers.{i}.1.fn.net.0, .net.2
  norm/{scale,bias}                    <- norm.{weight,bias}
  head/kernel [D,K], head/bias         <- mlp_head.3.weight [K,D] .T, mlp_head.3.bias

Every 1x1 conv becomes a Dense: kernel [in,out] = weight[:, :, 0, 0].T, bias as is.
LayerNorm: scale <- weight, bias <- bias.

The attention matrix of every layer is sown into the ``intermediates``
collection as ``layers_{i}/attn/attention`` with shape (B, heads, i, j); apply
with ``mutable=["intermediates"]`` to read it.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxattn.models import torch_layers
from jaxattn.models.registry import register

Array = jax.Array

class Embedding(nn.Module):
  """Non-overlapping patch conv plus a learned (H/p, W/p, D) position map.

  The positional embedding's shape comes from the image size seen at init, as
  in the seed (built from ``image_size``); applying the model to another size
  fails with Flax's parameter-shape error.
  """

  embedding_dim: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: Array) -> Array:
    p = self.patch_size
    x = nn.Conv(self.embedding_dim, (p, p), strides=(p, p), padding="VALID",
                dtype=self.dtype, param_dtype=jnp.float32,
                kernel_init=torch_layers.kernel_init,
                bias_init=torch_layers.bias_init(p * p * images.shape[-1]),
                name="patch")(images)
    pos = self.param("pos_embedding", nn.initializers.normal(stddev=1.0),
                     x.shape[1:], jnp.float32)
    return x + pos.astype(self.dtype)


class ChannelSelfAttention(nn.Module):
  """The seed's ``MhSelfAttention``: multi-head attention between channels.

  Channel c belongs to head c // head_channels (the seed's ``view(b, heads,
  head_channels, N)``). Scores are summed over all positions and the softmax
  runs over the query-channel axis, both as in the seed.
  """

  head_channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, h, w, d = x.shape
    hc = self.head_channels
    if d % hc:
      raise ValueError(
          f"embedding_dim={d} is not a multiple of head_channels={hc}; the "
          f"seed splits the channels into embedding_dim // head_channels heads.")
    heads = d // hc

    def project(name):
      return torch_layers.linear(d, d, name, self.dtype)(x).reshape(b, h * w, heads, hc)

    q, k, v = project("q"), project("k"), project("v")
    # Scores and softmax in float32 under bfloat16 compute: each score is a
    # sum over all H*W positions, too long for a bfloat16 accumulator.
    scores = jnp.einsum("bnhi,bnhj->bhij", q, k,
                        preferred_element_type=jnp.float32) * hc**-0.5
    # The seed's softmax(dim=-2): normalise over the query channel i, so each
    # column sums to 1. Kept for fidelity; a row softmax is the usual choice.
    attention = jax.nn.softmax(scores, axis=-2)
    self.sow("intermediates", "attention", attention)
    out = jnp.einsum("bhij,bnhj->bnhi", attention.astype(self.dtype), v)
    return torch_layers.linear(d, d, "unify_heads", self.dtype)(out.reshape(b, h, w, d))


class FeedForward(nn.Module):
  """1x1 conv D -> mlp_ratio*D, exact GELU, 1x1 conv back; no dropout."""

  mlp_ratio: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    hidden = self.mlp_ratio * d
    x = torch_layers.linear(hidden, d, "fc1", self.dtype)(x)
    x = nn.gelu(x, approximate=False)  # torch.nn.GELU is erf-exact.
    return torch_layers.linear(d, hidden, "fc2", self.dtype)(x)


class ConvViTBlock(nn.Module):
  """Pre-norm residual block: ``x = attn(LN(x)) + x; x = ff(LN(x)) + x``."""

  head_channels: int
  mlp_ratio: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    y = torch_layers.layer_norm("attn_norm", self.dtype)(x)
    x = ChannelSelfAttention(self.head_channels, self.dtype, name="attn")(y) + x
    y = torch_layers.layer_norm("ff_norm", self.dtype)(x)
    return FeedForward(self.mlp_ratio, self.dtype, name="ff")(y) + x


@register("conv_vit")
class ConvViT(nn.Module):
  """Seed 004's fully-convolutional ViT; defaults are the seed's settings.

  Takes NHWC float images, returns float32 logits (B, num_classes). ``dtype``
  is the compute dtype; parameters are always float32, and LayerNorm,
  attention scores and softmax, the pool and the head run in float32.
  """

  num_classes: int = 10
  patch_size: int = 2
  embedding_dim: int = 32
  depth: int = 4
  head_channels: int = 8
  mlp_ratio: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: Array, *, train: bool = False) -> Array:
    del train  # The seed has no dropout or batch statistics.
    torch_layers.check_images(images, self.patch_size)
    x = Embedding(self.embedding_dim, self.patch_size, self.dtype,
                  name="embedding")(images)
    for i in range(self.depth):
      x = ConvViTBlock(self.head_channels, self.mlp_ratio, self.dtype,
                       name=f"layers_{i}")(x)
    x = torch_layers.layer_norm("norm", self.dtype)(x)
    x = nn.gelu(x, approximate=False)  # The seed applies GELU before pooling.
    x = jnp.mean(x, axis=(1, 2), dtype=jnp.float32)
    # A float32 head keeps logits exact for the loss; it is D x K, tiny.
    return nn.Dense(self.num_classes, dtype=jnp.float32,
                    param_dtype=jnp.float32, kernel_init=torch_layers.kernel_init,
                    bias_init=torch_layers.bias_init(self.embedding_dim),
                    name="head")(x)
