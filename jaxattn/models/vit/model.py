"""Seed 002: the "Visual Attention Model" ViT trained from scratch on MNIST/CIFAR.

Seed quirks reproduced on purpose (see ``specs/seeds.md``, "Seed 002"):

* The encoder block is the author's, not the ViT paper's:
  ``x = LN(x); x = MHA(x) + x; x = MLP(x) + x``. There is one LayerNorm per
  block, it *replaces* the residual stream (so the attention residual adds the
  normalised x), and there is no final LayerNorm before the head.
* Class token and positional embedding are ~ N(0, 1) (``torch.randn``).
* ``nn.MultiheadAttention`` init: ``in_proj_weight`` is xavier-uniform over
  the *fused* [3D, D] tensor, so each of q, k, v gets the bound
  sqrt(6 / (D + 3D)), not the sqrt(6 / 2D) of a standalone xavier init;
  in_proj and out_proj biases are zero; out_proj's weight keeps the Linear
  default. Every other Conv2d/Linear has PyTorch's default init.
* PyTorch numerics: LayerNorm eps 1e-5, exact (erf) GELU, no dropout.

The block is ``transformer.Seed002EncoderBlock``, built from the project's
one ``MultiHeadSelfAttention`` (flat [D, D] projections, initialised as
``transformer.TORCH_MULTIHEAD``) and ``MlpBlock``.

``drop_path_rate`` (default 0, as in the seed) adds stochastic depth in
training: each block's attention and MLP branch is skipped per example,
block i of L with probability ``drop_path_rate * i / (L - 1)``, as timm does
(``layers.drop_path_scales``). It creates no parameters.

Parameter names (Flax ``params/...`` <- the seed's PyTorch state_dict key):

  patch_embedding/patch_layer/kernel [p,p,C,D]   <- patch_embedding.patch_layer.weight
                                                    [D,C,p,p].transpose(2, 3, 1, 0)
  patch_embedding/patch_layer/bias               <- patch_embedding.patch_layer.bias
  patch_embedding/class_token [1,1,D]            <- patch_embedding.class_token [D,1]
                                                    .T[None]
  patch_embedding/positional_embedding [1,N+1,D] <- patch_embedding.positional_embedding
                                                    [D,N+1].T[None]
  transformer_encoder_{i}/layer_norm             <- transformer_encoder.{i}.layer_norm
  transformer_encoder_{i}/self_attention/query   <- ...self_attention.in_proj_{weight,bias}[:D]
                                      .../key    <- ...in_proj_{weight,bias}[D:2D]
                                      .../value  <- ...in_proj_{weight,bias}[2D:]
                                      .../out    <- ...self_attention.out_proj
  transformer_encoder_{i}/mlp_block/fc1, fc2     <- transformer_encoder.{i}.mlp_block.0, .2
  output_layer                                   <- output_layer

Every Linear becomes a Dense: kernel [in,out] = weight.T, bias as is (for q, k,
v the rows of in_proj_weight [3D,D] are split q;k;v first, then transposed).
LayerNorm: scale <- weight, bias <- bias.

Within q, k, v and ``out``'s input, head h owns features h*D/heads ..
(h+1)*D/heads - 1, as in PyTorch, so no per-head reordering is needed.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxattn.models import layers
from jaxattn.models.transformer import Seed002EncoderBlock

Array = jax.Array


class PatchEmbedding(nn.Module):
  """Patch conv, class token at index 0, learned positional embedding.

  The positional embedding's length (N+1) comes from the image size seen at
  init; applying the model to another size fails with Flax's shape error.
  """

  hidden_dim: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: Array) -> Array:
    p, d = self.patch_size, self.hidden_dim
    x = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                param_dtype=jnp.float32, kernel_init=layers.kernel_init,
                bias_init=layers.bias_init(p * p * images.shape[-1]),
                name="patch_layer")(images)
    b = x.shape[0]
    # Row-major over the patch grid, like the seed's flatten(-2).
    x = x.reshape(b, -1, d)
    cls = self.param("class_token", nn.initializers.normal(stddev=1.0),
                     (1, 1, d), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)), x],
                        axis=1)
    pos = self.param("positional_embedding", nn.initializers.normal(stddev=1.0),
                     (1, x.shape[1], d), jnp.float32)
    return x + pos.astype(x.dtype)


class ViT(nn.Module):
  """Seed 002's ViT; defaults are the README's D=256, L=12, 8 heads, P=512.

  Takes NHWC float images, returns float32 logits (B, num_classes) read from
  the class token. ``dtype`` is the compute dtype; parameters are always
  float32, and LayerNorm statistics, attention softmax and the head run in
  float32.

  ``drop_path_rate``: stochastic depth with ``train=True`` (module
  docstring); needs the ``"dropout"`` RNG stream when it is not 0.
  """

  num_classes: int = 10
  patch_size: int = 4
  hidden_dim: int = 256
  depth: int = 12
  num_heads: int = 8
  mlp_dim: int = 512
  dtype: Any = jnp.float32
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, images: Array, *, train: bool = False) -> Array:
    # The seed has no dropout or batch statistics; `train` only switches
    # stochastic depth on (when drop_path_rate > 0).
    layers.check_images(images, self.patch_size)
    drop_scales = layers.drop_path_scales(
        self, images.shape[0], self.drop_path_rate, self.depth, train=train)
    x = PatchEmbedding(self.hidden_dim, self.patch_size, self.dtype,
                       name="patch_embedding")(images)
    for i in range(self.depth):
      x = Seed002EncoderBlock(self.num_heads, self.mlp_dim, self.dtype,
                              name=f"transformer_encoder_{i}")(
                                  x, drop_scales[i])
    # No final LayerNorm in the seed. A float32 head keeps logits exact for
    # the loss; it is D x K, tiny.
    return nn.Dense(self.num_classes, dtype=jnp.float32,
                    param_dtype=jnp.float32, kernel_init=layers.kernel_init,
                    bias_init=layers.bias_init(self.hidden_dim),
                    name="output_layer")(x[:, 0])
