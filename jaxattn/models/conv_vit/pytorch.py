"""Seed 004 in PyTorch: the EVA-8 S10 fully-convolutional ViT, author's layout.

The module tree reproduces the author's ``ViT`` so that its state_dict keys
are exactly the seed's (``specs/seeds.md``, "Seed 004", section 4)::

  embedding.pos_embedding [1,D,H/p,W/p]   embedding.patch.{weight [D,C,p,p], bias}
  transformer.layers.{i}.0.lnorm.{weight,bias}
  transformer.layers.{i}.0.fn.{k,q,v,unify_heads}.{weight [D,D,1,1], bias}
  transformer.layers.{i}.1.lnorm.{weight,bias}
  transformer.layers.{i}.1.fn.net.0.{weight [rD,D,1,1], bias}
  transformer.layers.{i}.1.fn.net.2.{weight [D,rD,1,1], bias}
  norm.{weight,bias}    mlp_head.3.{weight [K,D], bias}

(Checkpoints saved from the author's ``nn.DataParallel`` wrapper carry a
``module.`` prefix; strip it before ``load_state_dict``.)

Numerics equal ``jaxattn.models.conv_vit.ConvViT`` in eval mode: channels
first, channel attention (an 8x8 score matrix per head summed over all
positions, softmax over ``dim=-2``, the query channel), exact GELU, LayerNorm
eps 1e-5 over the channels, GELU before the global average pool.

``drop_path_rate`` (stochastic depth on both residual branches of every
block, timm's per-block rates) acts only in ``train()`` mode, with torch's
RNG; in ``eval()``, where the twins are used for inference and parity, it
does nothing. It adds no state_dict keys. (Helpers shared with
``jaxattn.models.vit.pytorch``.)
"""

import torch
from torch import nn

from jaxattn.torch_models.patches import patch_grid
from jaxattn.models.vit.pytorch import drop_path, drop_path_rates


class Embedding(nn.Module):
  """``patch`` conv p x p / p plus the learned (1, D, H/p, W/p) map."""

  def __init__(self, image_size, patch_size: int, in_channels: int,
               hidden_dim: int):
    super().__init__()
    rows, columns = patch_grid(image_size, patch_size)
    self.patch = nn.Conv2d(in_channels, hidden_dim, patch_size,
                           stride=patch_size)
    self.pos_embedding = nn.Parameter(
        torch.randn(1, hidden_dim, rows, columns))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.patch(x) + self.pos_embedding


class PreNormChannels(nn.Module):
  """LayerNorm over the channel axis of a (B, C, H, W) map, then ``fn``."""

  def __init__(self, dim: int, fn: nn.Module):
    super().__init__()
    self.lnorm = nn.LayerNorm(dim)  # eps 1e-5
    self.fn = fn

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.lnorm(x.transpose(1, -1)).transpose(1, -1)
    return self.fn(x)


class MhSelfAttention(nn.Module):
  """Multi-head attention between *channels* (the seed's quirk).

  Channel c belongs to head c // head_channels. Per head, scores
  ``q @ k^T * head_channels**-0.5`` (head_channels x head_channels, summed
  over all H*W positions), softmax over ``dim=-2`` (each column sums to 1).
  """

  def __init__(self, dim: int, head_channels: int):
    super().__init__()
    if dim % head_channels:
      raise ValueError(f"hidden_dim={dim} is not a multiple of "
                       f"head_channels={head_channels}.")
    self.heads = dim // head_channels
    self.head_channels = head_channels
    self.scale = head_channels ** -0.5
    self.k = nn.Conv2d(dim, dim, 1)
    self.q = nn.Conv2d(dim, dim, 1)
    self.v = nn.Conv2d(dim, dim, 1)
    self.unify_heads = nn.Conv2d(dim, dim, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    split = lambda t: t.reshape(b, self.heads, self.head_channels, h * w)
    q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
    attention = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-2)
    out = (attention @ v).reshape(b, -1, h, w)
    return self.unify_heads(out)


class FeedForward(nn.Module):
  """``net = Sequential(Conv1x1 D->rD, GELU (exact), Conv1x1 rD->D)``."""

  def __init__(self, dim: int, mlp_ratio: int):
    super().__init__()
    self.net = nn.Sequential(nn.Conv2d(dim, dim * mlp_ratio, 1), nn.GELU(),
                             nn.Conv2d(dim * mlp_ratio, dim, 1))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.net(x)


class Transformer(nn.Module):
  """``layers[i] = [PreNorm(attn), PreNorm(ff)]``; both residual."""

  def __init__(self, dim: int, depth: int, head_channels: int, mlp_ratio: int,
               drop_path_rate: float = 0.0):
    super().__init__()
    self.drop_path_rates = drop_path_rates(drop_path_rate, depth)
    self.layers = nn.ModuleList([
        nn.ModuleList([PreNormChannels(dim, MhSelfAttention(dim, head_channels)),
                       PreNormChannels(dim, FeedForward(dim, mlp_ratio))])
        for _ in range(depth)])

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for (attn, ff), rate in zip(self.layers, self.drop_path_rates):
      x = drop_path(attn(x), rate, self.training) + x
      x = drop_path(ff(x), rate, self.training) + x
    return x


class ConvViT(nn.Module):
  """Seed 004's ``ViT``; arguments are ``jaxattn.models.conv_vit.ConvViT``'s
  fields plus ``image_size`` (int or (H, W)) and ``in_channels``, which the
  positional embedding and the patch conv need at construction.

  Takes NCHW float images, returns logits (B, num_classes).
  ``drop_path_rate`` acts in ``train()`` mode only (module docstring).
  """

  def __init__(self, num_classes: int = 10, patch_size: int = 2,
               hidden_dim: int = 32, depth: int = 4, head_channels: int = 8,
               mlp_ratio: int = 4, *, image_size=32, in_channels: int = 3,
               dtype=None, chunk_size=None, drop_path_rate: float = 0.0):
    # Flax-only options: the compute dtype (the PyTorch model runs in its
    # own) and the CPU batch chunking, which does not change the outputs.
    del dtype, chunk_size
    super().__init__()
    self.embedding = Embedding(image_size, patch_size, in_channels,
                               hidden_dim)
    self.transformer = Transformer(hidden_dim, depth, head_channels,
                                   mlp_ratio, drop_path_rate)
    self.norm = nn.LayerNorm(hidden_dim)
    self.mlp_head = nn.Sequential(nn.GELU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(),
                                  nn.Linear(hidden_dim, num_classes))

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    x = self.transformer(self.embedding(images))
    x = self.norm(x.transpose(1, -1)).transpose(1, -1)
    return self.mlp_head(x)
