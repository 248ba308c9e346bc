"""Seed 000 in PyTorch: frozen ViT backbone + the Keras "model_1" fusion head.

The authors' model is Keras; no PyTorch layout exists, so this is the
project's own, mirroring ``jaxattn.models.hybrid``:

* ``backbone`` -- a ViT with timm ``VisionTransformer`` key names, so a timm
  state_dict (e.g. ``vit_base_patch8_224.augreg_in21k_ft_in1k``) loads into
  ``model.backbone`` with ``strict=True``::

    cls_token [1,1,D]  pos_embed [1,N+1,D]  patch_embed.proj.{weight [D,3,p,p], bias}
    blocks.{i}.norm1.*  blocks.{i}.attn.qkv.{weight [3D,D], bias} (q;k;v fused)
    blocks.{i}.attn.proj.*  blocks.{i}.norm2.*  blocks.{i}.mlp.fc1.*  blocks.{i}.mlp.fc2.*
    norm.*  head.{weight [1000,D], bias}

  vit_jax numerics (the Flax ``ViTBackbone``): LayerNorm eps 1e-6,
  tanh-approximate GELU, no dropout.
* ``fusion`` -- ``HybridFusionHead`` with the Flax module's names
  (``decrease_dimension_1``, ``conv2D_1_module_1``, ``conv2D_1_module_1_bn``,
  ``conv2D_2_module_1``, ``conv2D_2_module_1_bn``, ``conv2D_3_module_1``,
  ``bottleneck.{conv,group_conv_1,depthwise,group_conv_2}`` with
  ``refinement="bottleneck"``, ``dense2w``, ``dense2w_bn``, ``dense1w``,
  ``dense1w_bn``, ``model0_logits``, ``dense_vit11``, ``dense_vit11_bn``,
  ``dense_vit12``, ``dense_vit12_bn``, ``vit_logits``). Conv1d weights are
  [out, in/groups, k] (Flax kernel (k, in/groups, out) ``.transpose(2, 1,
  0)``), Linear weights [out, in]; grouped/depthwise output channel order is
  c * multiplier + m in both. BatchNorm is Keras' (eps 1e-3, momentum 0.99,
  i.e. PyTorch momentum 0.01).

Sequences are channels-first (B, C, L) here, (B, L, C) in Flax. Keras/TF
'same' padding is applied explicitly with ``F.pad`` (stride 1: ``k - 1``
in all, the extra one on the right: k=3 pads 1/1, the depthwise k=250 on
length 2 pads 124/125), never PyTorch's ``padding="same"``.

``Hybrid`` returns ``{"model0", "vit", "average"}`` probabilities, as the Flax
model, for NCHW images (already in [-1, 1]) or for (B, 1000) backbone logits.
"""

import math

import torch
from torch import nn
import torch.nn.functional as F

from jaxattn.torch_models.patches import patch_grid

IMAGENET_CLASSES = 1000
REFINEMENTS = ("none", "bottleneck")

# Keras he_normal / Flax variance_scaling "truncated_normal": a normal cut at
# +-2 std, rescaled so the truncated std is sqrt(2 / fan_in).
_TRUNC_STD = 0.87962566103423978


def _he_normal_(weight: torch.Tensor, fan_in: int) -> None:
  std = math.sqrt(2.0 / fan_in) / _TRUNC_STD
  nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


# --------------------------------------------------------------------------
# The backbone: timm's VisionTransformer layout.
# --------------------------------------------------------------------------


class PatchEmbed(nn.Module):
  def __init__(self, patch_size: int, in_channels: int, dim: int):
    super().__init__()
    self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D), row-major


class Attention(nn.Module):
  """timm's ``Attention``: fused ``qkv`` (rows q;k;v, head-major), ``proj``."""

  def __init__(self, dim: int, num_heads: int):
    super().__init__()
    self.num_heads = num_heads
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, n, d = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head_dim)
    return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU(approximate="tanh")  # vit_jax / Flax nn.gelu default
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
  """Pre-norm: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

  def __init__(self, dim: int, num_heads: int, mlp_dim: int):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.attn = Attention(dim, num_heads)
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = Mlp(dim, mlp_dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
  """ViT with a class token and timm's key names (``ViTBackbone`` in Flax).

  Defaults are ViT-B/8 at 224 px with the 1000-class head (86,576,872
  parameters). Returns the (B, num_outputs) logits of the class token.
  """

  def __init__(self, patch_size: int = 8, hidden_dim: int = 768,
               depth: int = 12, num_heads: int = 12, mlp_dim: int = 3072,
               num_outputs: int = IMAGENET_CLASSES, *, image_size=224,
               in_channels: int = 3, dtype=None):
    del dtype  # Flax compute dtype; the PyTorch model runs in its own dtype.
    super().__init__()
    if hidden_dim % num_heads:
      raise ValueError(f"hidden_dim={hidden_dim} is not a multiple of "
                       f"num_heads={num_heads}.")
    rows, columns = patch_grid(image_size, patch_size)
    num_patches = rows * columns
    self.patch_embed = PatchEmbed(patch_size, in_channels, hidden_dim)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
    self.pos_embed = nn.Parameter(
        torch.randn(1, num_patches + 1, hidden_dim) * 0.02)
    self.blocks = nn.Sequential(*[Block(hidden_dim, num_heads, mlp_dim)
                                  for _ in range(depth)])
    self.norm = nn.LayerNorm(hidden_dim, eps=1e-6)
    self.head = nn.Linear(hidden_dim, num_outputs)
    for m in self.modules():  # vit_jax-like: xavier-uniform Linears.
      if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        nn.init.zeros_(m.bias)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    x = self.patch_embed(images)
    x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    x = self.blocks(x + self.pos_embed)
    return self.head(self.norm(x)[:, 0])


# --------------------------------------------------------------------------
# The trainable fusion head.
# --------------------------------------------------------------------------


class SameConv1d(nn.Conv1d):
  """Stride-1 ``Conv1d`` with TF/Flax 'SAME' padding: ``(k-1)//2`` on the
  left, the rest on the right. Same parameters (and keys) as ``nn.Conv1d``."""

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
               groups: int = 1, fan_in: int | None = None):
    super().__init__(in_channels, out_channels, kernel_size, groups=groups)
    total = kernel_size - 1
    self.same_padding = (total // 2, total - total // 2)
    # he_normal kernels, zero biases; fan_in defaults to the true one.
    _he_normal_(self.weight, fan_in or self.weight.shape[1] * kernel_size)
    nn.init.zeros_(self.bias)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return super().forward(F.pad(x, self.same_padding))


def _keras_batch_norm(features: int) -> nn.BatchNorm1d:
  return nn.BatchNorm1d(features, eps=1e-3, momentum=0.01)


def _dense(in_features: int, out_features: int) -> nn.Linear:
  layer = nn.Linear(in_features, out_features)  # Keras: glorot_uniform, zeros
  nn.init.xavier_uniform_(layer.weight)
  nn.init.zeros_(layer.bias)
  return layer


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
  """ShuffleNet channel shuffle on dim 1 of (B, C, L): (g, C/g) -> (C/g, g)."""
  b, c, length = x.shape
  return (x.reshape(b, groups, c // groups, length).transpose(1, 2)
          .reshape(b, c, length))


class BottleneckRefinement(nn.Module):
  """Flax ``BottleneckRefinement`` on (B, C, L); see its docstring::

    h = x + ELU(conv: Conv1D(C, 5, 'same')(x))
    g = ELU(group_conv_1: Conv1D(C, 1, groups=4)(h))
    d = depthwise: DepthwiseConv1D(3, 'same', multiplier 2)(shuffle(g, 4))
    out = h + group_conv_2: Conv1D(C, 1, groups=4)(d)
  """

  def __init__(self, channels: int, groups: int = 4, kernel_size: int = 5,
               depthwise_kernel_size: int = 3, depth_multiplier: int = 2):
    super().__init__()
    if channels % groups:
      raise ValueError(f"{channels} channels are not divisible into "
                       f"groups={groups}.")
    self.groups = groups
    self.conv = SameConv1d(channels, channels, kernel_size)
    self.group_conv_1 = SameConv1d(channels, channels, 1, groups=groups)
    self.depthwise = SameConv1d(channels, channels * depth_multiplier,
                                depthwise_kernel_size, groups=channels)
    self.group_conv_2 = SameConv1d(channels * depth_multiplier, channels, 1,
                                   groups=groups)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = x + F.elu(self.conv(x))
    g = F.elu(self.group_conv_1(h))
    d = self.depthwise(channel_shuffle(g, self.groups))
    return h + self.group_conv_2(d)


def _pool1d(x: torch.Tensor, size: int, reduce) -> torch.Tensor:
  """Keras Average/MaxPooling1D(size, strides=size, 'valid') on (B, n)."""
  n = x.shape[1] // size
  return reduce(x[:, :n * size].reshape(x.shape[0], n, size))


_POOLS = (2, 3, 5)


class HybridFusionHead(nn.Module):
  """Keras ``model_1`` plus the ``model0``/``vit`` heads (Flax
  ``HybridFusionHead``): (B, num_inputs) backbone logits -> dict of
  probabilities ``{"model0", "vit", "average"}``."""

  def __init__(self, num_classes: int = 10, duplicate_avg_branch: bool = True,
               refinement: str = "none", *,
               num_inputs: int = IMAGENET_CLASSES, dtype=None):
    del dtype  # Flax compute dtype; the PyTorch model runs in its own dtype.
    super().__init__()
    if refinement not in REFINEMENTS:
      raise ValueError(f"Unknown refinement {refinement!r}; known: "
                       f"{', '.join(REFINEMENTS)}.")
    self.duplicate_avg_branch = duplicate_avg_branch
    pooled = sum(num_inputs // s for s in _POOLS)  # 1033 for 1000 logits
    self.decrease_dimension_1 = SameConv1d(pooled, 500, 1)
    self.conv2D_1_module_1 = SameConv1d(pooled, 500, 3)
    self.conv2D_1_module_1_bn = _keras_batch_norm(500)
    self.conv2D_2_module_1 = SameConv1d(500, 250, 1)
    self.conv2D_2_module_1_bn = _keras_batch_norm(250)
    # DepthwiseConv1D(250, depth_multiplier=2); Keras' fan_in is 250 * 250.
    self.conv2D_3_module_1 = SameConv1d(250, 500, 250, groups=250,
                                        fan_in=250 * 250)
    self.bottleneck = (BottleneckRefinement(500) if refinement == "bottleneck"
                       else None)
    features = 2 * 500 + num_inputs
    for names in (("dense2w", "dense1w", "model0_logits"),
                  ("dense_vit11", "dense_vit12", "vit_logits")):
      setattr(self, names[0], _dense(features, 64))
      setattr(self, f"{names[0]}_bn", _keras_batch_norm(64))
      setattr(self, names[1], _dense(64, 32))
      setattr(self, f"{names[1]}_bn", _keras_batch_norm(32))
      setattr(self, names[2], _dense(32, num_classes))
    self.dropout = nn.Dropout(0.2)

  def _attention_module_1(self, logits: torch.Tensor) -> torch.Tensor:
    mean = lambda t: t.mean(dim=-1)
    avg = torch.cat([_pool1d(logits, s, mean) for s in _POOLS], dim=1)
    if self.duplicate_avg_branch:
      first = avg  # The authors' max_pool_1..3 are AveragePooling1D.
    else:
      amax = lambda t: t.amax(dim=-1)
      first = torch.cat([_pool1d(logits, s, amax) for s in _POOLS], dim=1)
    a1 = torch.stack([first, avg], dim=2)  # (B, 1033, 2): positions [max, avg]
    input_dec = self.decrease_dimension_1(a1)
    x1 = self.conv2D_1_module_1_bn(self.conv2D_1_module_1(a1))
    x1 = torch.softmax(x1, dim=1)  # Keras softmax over the 500 channels
    x2 = self.conv2D_2_module_1(input_dec * x1)
    x2 = F.elu(self.conv2D_2_module_1_bn(x2))
    x2 = self.conv2D_3_module_1(x2)
    return input_dec * x2

  def _head(self, x: torch.Tensor, names: tuple[str, str, str]) -> torch.Tensor:
    for name in names[:2]:
      x = F.elu(getattr(self, name)(x))
      x = self.dropout(getattr(self, f"{name}_bn")(x))
    return torch.softmax(getattr(self, names[2])(x), dim=-1)

  def forward(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
    if logits.ndim != 2:
      raise ValueError(f"Expected backbone logits of shape (batch, n), got "
                       f"shape {tuple(logits.shape)}.")
    z = self._attention_module_1(logits)
    if self.bottleneck is not None:
      z = self.bottleneck(z)
    # Keras Flatten of (B, 2, 500): position-major, as Flax's reshape.
    f1 = z.transpose(1, 2).reshape(z.shape[0], -1)
    features = torch.cat([f1, logits], dim=-1)  # both heads: the authors' bug
    model0 = self._head(features, ("dense2w", "dense1w", "model0_logits"))
    vit = self._head(features, ("dense_vit11", "dense_vit12", "vit_logits"))
    return {"model0": model0, "vit": vit, "average": (model0 + vit) / 2}


class Hybrid(nn.Module):
  """``backbone`` (timm-layout ViT) + ``fusion`` (``HybridFusionHead``).

  Arguments are the Flax ``Hybrid``'s fields plus ``image_size`` (the
  backbone's resolution, 224 for B/8; int or (H, W)) and ``in_channels``.
  ``freeze_backbone`` detaches the backbone logits (and its parameters get
  ``requires_grad=False``); ``double_normalization`` applies ``x / 127.5 - 1``
  to the [-1, 1] inputs first, as the authors' CIFAR-100 / Cars runs.
  """

  def __init__(self, num_classes: int = 10, patch_size: int = 8,
               hidden_dim: int = 768, depth: int = 12, num_heads: int = 12,
               mlp_dim: int = 3072, freeze_backbone: bool = True,
               double_normalization: bool = False,
               duplicate_avg_branch: bool = True, refinement: str = "none", *,
               image_size=224, in_channels: int = 3, dtype=None):
    del dtype  # Flax compute dtype; the PyTorch model runs in its own dtype.
    super().__init__()
    self.freeze_backbone = freeze_backbone
    self.double_normalization = double_normalization
    self.backbone = VisionTransformer(patch_size, hidden_dim, depth, num_heads,
                                      mlp_dim, IMAGENET_CLASSES,
                                      image_size=image_size,
                                      in_channels=in_channels)
    if freeze_backbone:
      self.backbone.requires_grad_(False)
    self.fusion = HybridFusionHead(num_classes, duplicate_avg_branch,
                                   refinement, num_inputs=IMAGENET_CLASSES)

  def backbone_logits(self, images: torch.Tensor) -> torch.Tensor:
    if self.double_normalization:
      images = images.float() / 127.5 - 1.0
    logits = self.backbone(images)
    return logits.detach() if self.freeze_backbone else logits

  def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """NCHW images, or (B, 1000) backbone logits from a feature cache."""
    if images.ndim == 2:
      return self.fusion(images.float())
    return self.fusion(self.backbone_logits(images))
