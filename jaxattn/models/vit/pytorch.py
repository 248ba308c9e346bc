"""Seed 002 in PyTorch: the "Visual Attention Model" ViT, author's layout.

State_dict keys are the seed's (``specs/seeds.md``, "Seed 002", section 4)::

  patch_embedding.class_token [D,1]
  patch_embedding.positional_embedding [D,N+1]
  patch_embedding.patch_layer.{weight [D,C,p,p], bias}
  transformer_encoder.{i}.layer_norm.{weight,bias}
  transformer_encoder.{i}.self_attention.in_proj_weight [3D,D] (q;k;v), in_proj_bias
  transformer_encoder.{i}.self_attention.out_proj.{weight,bias}
  transformer_encoder.{i}.mlp_block.0.{weight [P,D],bias}; mlp_block.2.{weight [D,P],bias}
  output_layer.{weight [K,D], bias}

The author's block is kept: ``x = LN(x); x = MHA(x) + x; x = MLP(x) + x``
(one LayerNorm that replaces the stream, no final LayerNorm), exact GELU,
LayerNorm eps 1e-5, no dropout. Eval-mode numerics equal
``jaxattn.models.vit.ViT``.

``drop_path_rate`` is the Flax model's stochastic depth (timm's
``DropPath``, per-block rates ``linspace(0, drop_path_rate, depth)``, on the
attention and MLP branches): it acts only in ``train()`` mode (with torch's
RNG, so not the Flax model's masks) and does nothing in ``eval()``, where
the twins are used for inference and parity. It adds no state_dict keys.
"""

import torch
from torch import nn

from jaxattn.torch_models.patches import patch_grid


def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
  """Block i of ``depth`` drops with ``drop_path_rate * i / (depth - 1)``."""
  if not 0.0 <= drop_path_rate <= 1.0:
    raise ValueError(f"drop_path_rate={drop_path_rate} must be in [0, 1].")
  if depth <= 1:
    return [0.0] * depth
  return [drop_path_rate * i / (depth - 1) for i in range(depth)]


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
  """timm's ``drop_path``: per example, 0 with probability ``rate``, else
  ``x / (1 - rate)``; the identity outside training or at rate 0."""
  if not training or rate == 0.0:
    return x
  keep = 1.0 - rate
  mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
  if keep > 0.0:
    mask.div_(keep)
  return x * mask


class PatchEmbedding(nn.Module):
  """Patch conv -> (B,D,N); class token at token index 0; + (D,N+1) positions."""

  def __init__(self, image_size, patch_size: int, in_channels: int,
               hidden_dim: int):
    super().__init__()
    rows, columns = patch_grid(image_size, patch_size)
    num_patches = rows * columns
    self.patch_layer = nn.Conv2d(in_channels, hidden_dim, patch_size,
                                 stride=patch_size)
    self.class_token = nn.Parameter(torch.randn(hidden_dim, 1))
    self.positional_embedding = nn.Parameter(
        torch.randn(hidden_dim, num_patches + 1))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.patch_layer(x).flatten(-2)  # (B, D, N), row-major patch grid
    cls = self.class_token.expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=-1) + self.positional_embedding
    return x.transpose(1, 2)  # (B, N+1, D)


class TransformerEncoderBlock(nn.Module):
  """The author's block: ``x = LN(x); x = MHA(x) + x; x = MLP(x) + x``."""

  def __init__(self, hidden_dim: int, num_heads: int, mlp_dim: int,
               drop_path_rate: float = 0.0):
    super().__init__()
    self.drop_path_rate = drop_path_rate
    if hidden_dim % num_heads:
      raise ValueError(f"hidden_dim={hidden_dim} is not a multiple of "
                       f"num_heads={num_heads}.")
    self.layer_norm = nn.LayerNorm(hidden_dim)
    self.self_attention = nn.MultiheadAttention(hidden_dim, num_heads,
                                                batch_first=True)
    self.mlp_block = nn.Sequential(nn.Linear(hidden_dim, mlp_dim), nn.GELU(),
                                   nn.Linear(mlp_dim, hidden_dim))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    rate, training = self.drop_path_rate, self.training
    x = self.layer_norm(x)
    x = drop_path(self.self_attention(x, x, x, need_weights=False)[0], rate,
                  training) + x
    return drop_path(self.mlp_block(x), rate, training) + x


class ViT(nn.Module):
  """Seed 002's ``AttentionModel``; arguments are ``jaxattn.models.vit.ViT``'s
  fields plus ``image_size`` (int or (H, W)) and ``in_channels``.

  Takes NCHW float images, returns logits (B, num_classes) from the class
  token. ``drop_path_rate`` acts in ``train()`` mode only (module docstring).
  """

  def __init__(self, num_classes: int = 10, patch_size: int = 4,
               hidden_dim: int = 256, depth: int = 12, num_heads: int = 8,
               mlp_dim: int = 512, *, image_size=32, in_channels: int = 3,
               dtype=None, drop_path_rate: float = 0.0):
    del dtype  # Flax compute dtype; the PyTorch model runs in its own dtype.
    super().__init__()
    self.patch_embedding = PatchEmbedding(image_size, patch_size, in_channels,
                                          hidden_dim)
    self.transformer_encoder = nn.Sequential(*[
        TransformerEncoderBlock(hidden_dim, num_heads, mlp_dim, rate)
        for rate in drop_path_rates(drop_path_rate, depth)])
    self.output_layer = nn.Linear(hidden_dim, num_classes)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    x = self.transformer_encoder(self.patch_embedding(images))
    return self.output_layer(x[:, 0])
