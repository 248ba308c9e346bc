"""Seed 000's frozen backbone: a ViT in the vit_jax / big_vision layout.

``ViTBackbone`` is vit_jax's ``VisionTransformer`` (class token, learned
positional embedding, pre-norm blocks, final LayerNorm, head) with the
parameter paths of the published checkpoints, so an official ``.npz`` loads
with ``vit_npz.load_vit_npz``. Its blocks are
``transformer.VitJaxEncoderBlock``: the project's one
``MultiHeadSelfAttention`` in Flax's per-head parameter layout
(``nn.MultiHeadDotProductAttention``'s, which the checkpoints use) and
``MlpBlock`` with vit_jax's names, GELU and initialisers.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxattn.configlib import ConfigError
from jaxattn.models import layers
from jaxattn.models.transformer import VitJaxEncoderBlock

Array = jax.Array

# ViT-B/8 at 224 px: the AugReg checkpoint behind TF-Hub
# sayakpaul/vit_b8_classification/1, which outputs 1000 ImageNet logits.
IMAGENET_CLASSES = 1000


class _PositionEmbedding(nn.Module):
  """Learned (1, N+1, D) positional embedding, vit_jax's AddPositionEmbs."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    pos = self.param("pos_embedding", nn.initializers.normal(stddev=0.02),
                     (1,) + x.shape[1:], jnp.float32)
    return x + pos.astype(x.dtype)


class _Encoder(nn.Module):
  """vit_jax's ``Transformer``: pos-embedding, blocks, final LayerNorm."""

  depth: int
  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = _PositionEmbedding(name="posembed_input")(x)
    for i in range(self.depth):
      x = VitJaxEncoderBlock(self.num_heads, self.mlp_dim, self.dtype,
                             name=f"encoderblock_{i}")(x)
    return nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=jnp.float32,
                        name="encoder_norm")(x)


class ViTBackbone(nn.Module):
  """ViT with a class token, in the vit_jax / big_vision checkpoint layout.

  Defaults are ViT-B/8 with the 1000-class ImageNet head (86,576,872
  parameters at 224 px). Returns float32 logits (B, num_outputs) from the class
  token. The top-level parameter paths equal the ``.npz`` keys split at '/'::

    embedding/{kernel [p,p,3,D], bias}   cls [1,1,D]
    Transformer/posembed_input/pos_embedding [1,N+1,D]
    Transformer/encoderblock_{i}/LayerNorm_0, LayerNorm_2/{scale,bias}
    Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/
        {query,key,value}/{kernel [D,H,D/H], bias [H,D/H]}
        out/{kernel [H,D/H,D], bias [D]}
    Transformer/encoderblock_{i}/MlpBlock_3/Dense_0, Dense_1/{kernel,bias}
    Transformer/encoder_norm/{scale,bias}
    head/{kernel [D,num_outputs], bias}

  vit_jax numerics: LayerNorm eps 1e-6, tanh-approximate GELU, no dropout
  (AugReg fine-tuned with dropout 0 and stochastic depth 0, and here the
  backbone is frozen), so ``train`` changes nothing. Initialisation follows
  vit_jax except the head (vit_jax: zeros), which is xavier-uniform here so
  that an unloaded backbone still gives varied logits in smoke runs; every
  real use loads a checkpoint. The positional embedding's length comes from
  the image size seen at init (785 tokens at 224 px); ``load_vit_npz`` can
  resize a checkpoint's embedding to it.
  """

  patch_size: int = 8
  hidden_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  num_outputs: int = IMAGENET_CLASSES
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: Array, *, train: bool = False) -> Array:
    del train  # No dropout, no batch statistics.
    layers.check_images(images, self.patch_size)
    if self.hidden_dim % self.num_heads:
      raise ConfigError(f"hidden_dim={self.hidden_dim} is not a multiple of "
                        f"num_heads={self.num_heads}.")
    p, d = self.patch_size, self.hidden_dim
    x = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                param_dtype=jnp.float32, name="embedding")(images)
    b = x.shape[0]
    x = x.reshape(b, -1, d)  # Row-major over the patch grid, as vit_jax.
    cls = self.param("cls", nn.initializers.zeros, (1, 1, d), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)), x],
                        axis=1)
    x = _Encoder(self.depth, self.num_heads, self.mlp_dim, self.dtype,
                 name="Transformer")(x)
    # A float32 head: these logits are the fusion head's only input.
    return nn.Dense(self.num_outputs, dtype=jnp.float32, param_dtype=jnp.float32,
                    kernel_init=nn.initializers.xavier_uniform(), name="head")(
                        x[:, 0])
