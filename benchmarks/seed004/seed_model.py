"""Seed 004's model, transcribed line for line from its notebook (EVA-8 S10,
``shared/seeds/004``; ``shared/specs/seeds.md``, "Seed 004"), plain PyTorch.

The reference that ``forward_vs_seed.py`` and ``torch_seed_recipe.py``
compare the project with: it is not the project's twin
(``jaxattn/torch_models/conv_vit.py``) and shares no code with it.
"""

import torch
from torch import nn
import torch.nn.functional as F


class Embedding(nn.Module):

  def __init__(self, embedding_dim, reduced_size, in_channels, patch_size):
    super().__init__()
    self.patch = nn.Conv2d(in_channels, embedding_dim, patch_size,
                           stride=patch_size)
    self.pos_embedding = nn.Parameter(
        torch.randn(1, embedding_dim, reduced_size, reduced_size))

  def forward(self, x):
    return self.patch(x) + self.pos_embedding


class MhSelfAttention(nn.Module):

  def __init__(self, in_channels, out_channels=512, head_channels=8):
    super().__init__()
    self.head_channels = head_channels
    self.heads = out_channels // head_channels
    self.scale = head_channels**-0.5
    self.k = nn.Conv2d(in_channels, out_channels, 1)
    self.q = nn.Conv2d(in_channels, out_channels, 1)
    self.v = nn.Conv2d(in_channels, out_channels, 1)
    self.unify_heads = nn.Conv2d(out_channels, out_channels, 1)

  def forward(self, x):
    b, _, h, w = x.shape
    keys = self.k(x).view(b, self.heads, self.head_channels, -1)
    queries = self.q(x).view(b, self.heads, self.head_channels, -1)
    values = self.v(x).view(b, self.heads, self.head_channels, -1)
    attend = queries @ keys.transpose(-2, -1) * self.scale
    attention = F.softmax(attend, dim=-2)
    out = attention @ values
    out = out.view(b, -1, h, w)
    return self.unify_heads(out)


class PreNormChannels(nn.Module):

  def __init__(self, dim, fn):
    super().__init__()
    self.lnorm = nn.LayerNorm(dim)
    self.fn = fn

  def forward(self, x):
    x = x.transpose(1, -1)
    x = self.lnorm(x)
    x = x.transpose(-1, 1)
    return self.fn(x)


class FeedForward(nn.Module):

  def __init__(self, in_channels, out_channels, mult=4):
    super().__init__()
    hidden = in_channels * mult
    self.net = nn.Sequential(nn.Conv2d(in_channels, hidden, 1), nn.GELU(),
                             nn.Conv2d(hidden, out_channels, 1))

  def forward(self, x):
    return self.net(x)


class Transformer(nn.Module):

  def __init__(self, depth, head_channels, in_channels, out_channels):
    super().__init__()
    self.layers = nn.ModuleList([nn.ModuleList([
        PreNormChannels(in_channels, MhSelfAttention(
            in_channels, out_channels, head_channels)),
        PreNormChannels(in_channels, FeedForward(in_channels, out_channels)),
    ]) for _ in range(depth)])

  def forward(self, x):
    for attn, ff in self.layers:
      x = attn(x) + x
      x = ff(x) + x
    return x


class SeedViT(nn.Module):

  def __init__(self, image_size, patch_size, in_channels, embedding_dim, depth,
               head_channels):
    super().__init__()
    reduced_size = image_size // patch_size
    self.embedding = Embedding(embedding_dim, reduced_size, in_channels,
                               patch_size)
    self.transformer = Transformer(depth, head_channels, embedding_dim,
                                   embedding_dim)
    self.norm = nn.LayerNorm(embedding_dim)
    self.mlp_head = nn.Sequential(nn.GELU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(embedding_dim, 10))

  def forward(self, x):
    x = self.embedding(x)
    x = self.transformer(x)
    x = x.transpose(1, -1)
    x = self.norm(x)
    x = x.transpose(-1, 1)
    return self.mlp_head(x)
