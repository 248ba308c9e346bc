"""Seed 004: the EVA-8 S10 fully-convolutional ViT (CIFAR-10, 59,818 params).

The author's PyTorch model is channels-first and uses 1x1 convolutions where a
ViT has linear layers. Here everything runs channels-last (NHWC), so each 1x1
convolution is a matmul over the channel axis, with no transposes.

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

How it is computed (the same function, reassociated; profile-driven, see
``benchmarks/README.md``). Because the seed's attention only mixes channels,
a block's attention branch is a per-image linear map of its input:

* the scores ``sum_n q_n k_n^T`` are ``Wq^T G Wk`` (plus bias terms) with
  ``G = sum_n y_n y_n^T``, the (D x D) Gram matrix of the normalised input y:
  one pass over the activations instead of three projections;
* the output ``unify(blockdiag(A) v)`` is ``y @ P + c`` with the per-image
  ``P = Wv blockdiag(A)^T Wunify``, so q, k, v and the attention output are
  never materialised;
* each LayerNorm's scale and bias are folded into the (tiny) matrices of the
  linear map that follows it, so only the normalisation touches activations;
* the patch conv (kernel = stride = p) is a reshape and one matmul;
* GELU, the normalisation and the feed-forward matmuls go through
  ``kernels``; under the CPU kernels they use custom gradients and the batch
  runs in chunks of ``chunk_size`` images, each recomputed in the backward
  pass (``kernels.map_in_chunks``): its arrays then stay in cache.

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

Every 1x1 conv is a Dense-layout kernel [in,out] = weight[:, :, 0, 0].T, bias
as is. LayerNorm: scale <- weight, bias <- bias.

``drop_path_rate`` (default 0, as in the seed) adds stochastic depth in
training: each block's attention and feed-forward branch is skipped per
example, block i of L with probability ``drop_path_rate * i / (L - 1)``, as
timm does (``layers.drop_path_scales``). The masks are drawn for the whole
batch before the chunked trunk and sliced with the images
(``kernels.map_in_chunks`` maps over both), so they do not depend on
``chunk_size``. It creates no parameters.

The attention matrix of every layer is sown into the ``intermediates``
collection as ``layers_{i}/attn/attention`` with shape (B, heads, i, j); apply
with ``mutable=["intermediates"]`` to read it.
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxattn.configlib import ConfigError
from jaxattn.models import kernels, layers

Array = jax.Array
Linear = tuple[Array, Array]  # (kernel [in, out], bias [out]), float32.


# --------------------------------------------------------------------------
# Modules: the seed's names, shapes and init. Each creates its parameters in
# ``weights`` (also used by the chunked path, which computes with the pure
# functions below) and applies them in ``__call__``, so module outputs stay
# visible to Flax's capture_intermediates and method interceptors (explain).
# --------------------------------------------------------------------------


class _LinearWeights(nn.Module):
  """A ``torch.nn.Linear`` / 1x1 ``Conv2d``'s parameters in ``nn.Dense``'s
  names and layout (kernel [fan_in, features], bias), PyTorch's init."""

  features: int

  @nn.compact
  def weights(self, fan_in: int) -> Linear:
    kernel = self.param("kernel", layers.kernel_init,
                        (fan_in, self.features), jnp.float32)
    bias = self.param("bias", layers.bias_init(fan_in),
                      (self.features,), jnp.float32)
    return kernel, bias


class _LayerNormWeights(nn.Module):
  """``torch.nn.LayerNorm``'s weight and bias under ``nn.LayerNorm``'s names."""

  @nn.compact
  def weights(self, dim: int) -> tuple[Array, Array]:
    return (self.param("scale", nn.initializers.ones, (dim,), jnp.float32),
            self.param("bias", nn.initializers.zeros, (dim,), jnp.float32))


class _ConvWeights(nn.Module):
  """``nn.Conv``'s kernel [p, p, C, D] and bias for the patch conv."""

  features: int
  patch_size: int

  @nn.compact
  def weights(self, channels: int) -> Linear:
    p = self.patch_size
    kernel = self.param("kernel", layers.kernel_init,
                        (p, p, channels, self.features), jnp.float32)
    bias = self.param("bias", layers.bias_init(p * p * channels),
                      (self.features,), jnp.float32)
    return kernel, bias


class EmbeddingWeights(NamedTuple):
  patch_kernel: Array  # [p, p, C, D]
  patch_bias: Array  # [D]
  pos_embedding: Array  # [H/p, W/p, D]


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
  def weights(self, image_shape: tuple[int, ...]) -> EmbeddingWeights:
    p, d = self.patch_size, self.hidden_dim
    kernel, bias = _ConvWeights(d, p, name="patch").weights(image_shape[-1])
    grid = (image_shape[-3] // p, image_shape[-2] // p)
    pos = self.param("pos_embedding", nn.initializers.normal(stddev=1.0),
                     (*grid, d), jnp.float32)
    return EmbeddingWeights(kernel, bias, pos)

  def __call__(self, images: Array) -> Array:
    weights = self.weights(images.shape)
    return _embed(weights, images, self.dtype).reshape(
        *images.shape[:1], *weights.pos_embedding.shape)


class ChannelSelfAttention(nn.Module):
  """The seed's ``MhSelfAttention`` (q, k, v, unify_heads) on ``LN(x)``.

  Channel c belongs to head c // head_channels (the seed's ``view(b, heads,
  head_channels, N)``). Takes the normalised input before the LayerNorm's
  affine part and that LayerNorm's (scale, bias), which it folds in; returns
  the branch output, the shape of its input.
  """

  head_channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def weights(self, dim: int) -> dict[str, Linear]:
    return {name: _LinearWeights(dim, name=name).weights(dim)
            for name in ("q", "k", "v", "unify_heads")}

  def record(self, attention: Array) -> None:
    self.sow("intermediates", "attention", attention)

  def __call__(self, xhat: Array, norm: tuple[Array, Array]) -> Array:
    out, attention = _attention_branch(norm, self.weights(xhat.shape[-1]),
                                       xhat, self.head_channels, self.dtype)
    self.record(attention)
    return out


class FeedForward(nn.Module):
  """1x1 conv D -> mlp_ratio*D, exact GELU, 1x1 conv back; no dropout.

  Like ``ChannelSelfAttention``, takes the normalised input and folds in
  the LayerNorm's (scale, bias).
  """

  mlp_ratio: int
  dtype: Any = jnp.float32

  @nn.compact
  def weights(self, dim: int) -> tuple[Linear, Linear]:
    hidden = self.mlp_ratio * dim
    return (_LinearWeights(hidden, name="fc1").weights(dim),
            _LinearWeights(dim, name="fc2").weights(hidden))

  def __call__(self, xhat: Array, norm: tuple[Array, Array]) -> Array:
    return _feed_forward(norm, self.weights(xhat.shape[-1]), xhat, self.dtype)


class BlockWeights(NamedTuple):
  attn_norm: tuple[Array, Array]
  attn: dict[str, Linear]
  ff_norm: tuple[Array, Array]
  ff: tuple[Linear, Linear]


class ConvViTBlock(nn.Module):
  """Pre-norm residual block: ``x = attn(LN(x)) + x; x = ff(LN(x)) + x``.

  ``drop_scales``: None, or the (B, 2) stochastic-depth multipliers of the
  attention and feed-forward branches (``layers.drop_path_scales``).
  """

  head_channels: int
  mlp_ratio: int
  dtype: Any = jnp.float32

  def setup(self):
    self.attn_norm = _LayerNormWeights()
    self.attn = ChannelSelfAttention(self.head_channels, self.dtype)
    self.ff_norm = _LayerNormWeights()
    self.ff = FeedForward(self.mlp_ratio, self.dtype)

  def weights(self, dim: int) -> BlockWeights:
    return BlockWeights(self.attn_norm.weights(dim), self.attn.weights(dim),
                        self.ff_norm.weights(dim), self.ff.weights(dim))

  def record(self, attention: Array) -> None:
    self.attn.record(attention)

  def __call__(self, x: Array, drop_scales: Array | None = None) -> Array:
    dim = x.shape[-1]
    attn_scale, ff_scale = _branch_scales(drop_scales)
    x = layers.drop_path(self.attn(kernels.layer_norm_no_affine(x),
                                   self.attn_norm.weights(dim)),
                         attn_scale) + x
    return layers.drop_path(self.ff(kernels.layer_norm_no_affine(x),
                                    self.ff_norm.weights(dim)), ff_scale) + x


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


# --------------------------------------------------------------------------
# The computation, as pure functions of the parameters.
# --------------------------------------------------------------------------


def _embed(weights: EmbeddingWeights, images: Array, dtype) -> Array:
  """(B, H, W, C) -> (B, N, D) tokens, row-major over the patch grid."""
  p, _, c, d = weights.patch_kernel.shape
  b, h, w, _ = images.shape
  patches = images.reshape(b, h // p, p, w // p, p, c).transpose(
      0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p), p * p * c)
  tokens = kernels.dense(patches.astype(dtype),
                          weights.patch_kernel.reshape(p * p * c, d),
                          weights.patch_bias)
  return tokens + weights.pos_embedding.reshape(-1, d).astype(dtype)


def _with_bias_row(kernel: Array, bias: Array) -> Array:
  """[[kernel], [bias]]: ``[x, 1] @ it == x @ kernel + bias``."""
  return jnp.concatenate([kernel, bias[None, :]], axis=0)


def _attention_branch(norm: tuple[Array, Array], weights: dict[str, Linear],
                      xhat: Array, head_channels: int,
                      dtype) -> tuple[Array, Array]:
  """``unify_heads(attend(q, k, v))`` of ``y = xhat * scale + shift``.

  ``xhat`` is (B, ..., D) (any spatial shape); returns the branch output of
  the same shape and the attention (B, heads, i, j).
  """
  shape = xhat.shape
  b, d = shape[0], shape[-1]
  xhat = xhat.reshape(b, -1, d)
  n = xhat.shape[1]
  heads = d // head_channels
  f32 = jnp.float32
  scale, shift = norm

  def folded(name):  # y @ W + b == [xhat, 1] @ [[scale * W], [shift @ W + b]]
    kernel, bias = weights[name]
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
  # The seed's softmax(dim=-2): normalise over the query channel i, so each
  # column sums to 1. Kept for fidelity; a row softmax is the usual choice.
  attention = jax.nn.softmax(scores, axis=-2)
  # out_n = blockdiag(A) v_n, i.e. v @ M^T with M^T[(h, j), (h, i)] = A[h, i, j].
  mixing_t = jnp.einsum("bhij,hg->bhjgi", attention,
                        jnp.eye(heads, dtype=f32)).reshape(b, d, d)
  unify_kernel, unify_bias = weights["unify_heads"]
  projection = jnp.einsum("de,bef,fg->bdg", v, mixing_t, unify_kernel)
  # Accumulated in float32: bf16 x bf16 -> f32 dots, one rounding at the end.
  out = jnp.einsum("bnd,bdg->bng", xhat, projection[:, :d].astype(dtype),
                   preferred_element_type=f32)
  offset = projection[:, d] + unify_bias
  return (out + offset[:, None, :]).astype(dtype).reshape(shape), attention


def _feed_forward(norm: tuple[Array, Array], weights: tuple[Linear, Linear],
                  xhat: Array, dtype) -> Array:
  """``fc2(gelu(fc1(xhat * scale + shift)))``, the affine folded into fc1."""
  scale, shift = norm
  (fc1_kernel, fc1_bias), (fc2_kernel, fc2_bias) = weights
  hidden = kernels.dense(xhat.astype(dtype), scale[:, None] * fc1_kernel,
                          shift @ fc1_kernel + fc1_bias)
  return kernels.dense(kernels.gelu(hidden), fc2_kernel, fc2_bias)


def _branch_scales(drop_scales: Array | None
                   ) -> tuple[Array | None, Array | None]:
  """(attention, feed-forward) multipliers from a block's (B, 2) array."""
  if drop_scales is None:
    return None, None
  return drop_scales[:, 0], drop_scales[:, 1]


def _block(weights: BlockWeights, x: Array, head_channels: int, dtype,
           drop_scales: Array | None = None) -> tuple[Array, Array]:
  """``ConvViTBlock`` on (B, N, D) tokens; also returns the attention."""
  attn_scale, ff_scale = _branch_scales(drop_scales)
  branch, attention = _attention_branch(weights.attn_norm, weights.attn,
                                        kernels.layer_norm_no_affine(x),
                                        head_channels, dtype)
  x = layers.drop_path(branch, attn_scale) + x
  branch = _feed_forward(weights.ff_norm, weights.ff,
                         kernels.layer_norm_no_affine(x), dtype)
  return layers.drop_path(branch, ff_scale) + x, attention


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

  def _chunked_trunk(self, images, drop_scales, embedding, blocks,
                     chunk_size) -> Array:
    """Embedding and blocks, ``chunk_size`` images at a time (train only).

    ``drop_scales`` (per block, (B, 2) or None) are the whole batch's
    stochastic-depth multipliers: chunked with the images, so each row keeps
    its own.
    """
    embedding_weights = embedding.weights(images.shape)
    block_weights = [block.weights(self.hidden_dim) for block in blocks]
    record = self.is_mutable_collection("intermediates")

    def trunk(chunk):
      chunk_images, chunk_scales = chunk
      x = _embed(embedding_weights, chunk_images, self.dtype)
      attentions = []
      for weights, scales in zip(block_weights, chunk_scales):
        x, attention = _block(weights, x, self.head_channels, self.dtype,
                              scales)
        attentions.append(attention)
      return x, (attentions if record else [])

    x, attentions = kernels.map_in_chunks(trunk, (images, drop_scales),
                                          chunk_size)
    for block, attention in zip(blocks, attentions):
      block.record(attention)
    return x

  @nn.compact
  def __call__(self, images: Array, *, train: bool = False) -> Array:
    # The seed has no dropout or batch statistics: `train` picks the chunked
    # computation, which pays off in the backward pass, and switches
    # stochastic depth on (when drop_path_rate > 0).
    layers.check_images(images, self.patch_size)
    d, hc = self.hidden_dim, self.head_channels
    if d % hc:
      raise ConfigError(
          f"hidden_dim={d} is not a multiple of head_channels={hc}; the "
          f"seed splits the channels into hidden_dim // head_channels heads.")
    embedding = Embedding(d, self.patch_size, self.dtype, name="embedding")
    blocks = [ConvViTBlock(hc, self.mlp_ratio, self.dtype, name=f"layers_{i}")
              for i in range(self.depth)]
    chunk_size = (kernels.CPU_CHUNK_SIZE if self.chunk_size is None
                  else self.chunk_size)
    b, h, w, _ = images.shape
    drop_scales = layers.drop_path_scales(self, b, self.drop_path_rate,
                                          self.depth, train=train)
    if (train and kernels.active().cpu and chunk_size and b > chunk_size
        and not b % chunk_size):
      x = self._chunked_trunk(images, drop_scales, embedding, blocks,
                              chunk_size)
      x = x.reshape(b, h // self.patch_size, w // self.patch_size, d)
    else:  # Module by module: every output visible to interceptors.
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
