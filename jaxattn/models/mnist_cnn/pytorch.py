"""Seed 003 in PyTorch: the MNIST CNN with SE or SAGAN blocks, author's layout.

An ``nn.Sequential`` whose indices are the seed's (``specs/seeds.md``, "Seed
003", 2a and section 4)::

  0  Conv2d(C_in->12, k3, pad 2, no bias)      1  BatchNorm2d(12)   2  ReLU
  3  block(12)
  4  Conv2d(12->24, k6, s2, pad 2, no bias)     5  BatchNorm2d(24)   6  ReLU
  7  block(24)
  8  Conv2d(24->32, k6, s2, pad 2, no bias)     9  BatchNorm2d(32)  10  ReLU
  11 block(32)
  12 Flatten (C, H, W order)                   13 Linear(32*h*w -> 200, no bias)
  14 BatchNorm1d(200)  15 ReLU  16 Dropout(0.6)  17 Linear(200 -> K)
  18 LogSoftmax(dim=1)

``block`` is ``SEBlock`` (keys ``{3,7,11}.fc.{0,2}.weight``; ``3.fc.0.weight``
is [0, 12] with the default reduction 16), ``SelfAttentionBlock`` (keys
``{3,7,11}.{query,key,value}_conv.{weight,bias}``, ``.gamma [1]``) or, for
``block="none"``, an ``nn.Identity`` that keeps the indices. Every BN weight
is 1 and frozen (``requires_grad=False``), as in the seed.

Eval-mode numerics equal ``jaxattn.models.mnist_cnn.AttentionCNN``: both
return log-probabilities.
"""

import warnings

import torch
from torch import nn

# (out channels, kernel, stride); padding is 2 for all three convs.
_CONVS = ((12, 3, 1), (24, 6, 2), (32, 6, 2))
_BLOCKS = ("se", "sa", "none")


class SEBlock(nn.Module):
  """``x * Sigmoid(Linear(ReLU(Linear(GAP(x)))))``, both Linear without bias.

  The hidden width ``channels // reduction`` may be 0 (C=12): the gate is
  then the constant sigmoid(0) = 0.5.
  """

  def __init__(self, channels: int, reduction: int = 16):
    super().__init__()
    hidden = channels // reduction
    with warnings.catch_warnings():  # "Initializing zero-element tensors"
      warnings.simplefilter("ignore", UserWarning)
      self.fc = nn.Sequential(nn.Linear(channels, hidden, bias=False),
                              nn.ReLU(inplace=True),
                              nn.Linear(hidden, channels, bias=False),
                              nn.Sigmoid())

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = self.fc(x.mean(dim=(2, 3)))
    return x * y[:, :, None, None]


class SelfAttentionBlock(nn.Module):
  """SAGAN self-attention over the H*W positions; ``gamma * out + x``.

  energy = Q^T K without 1/sqrt(d) scaling, softmax over the keys (dim=-1),
  out = V A^T; gamma starts at 0, so the block starts as the identity.
  """

  def __init__(self, channels: int):
    super().__init__()
    self.query_conv = nn.Conv2d(channels, channels // 8, 1)
    self.key_conv = nn.Conv2d(channels, channels // 8, 1)
    self.value_conv = nn.Conv2d(channels, channels, 1)
    self.gamma = nn.Parameter(torch.zeros(1))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    q = self.query_conv(x).reshape(b, -1, h * w).permute(0, 2, 1)  # (B,N,C/8)
    k = self.key_conv(x).reshape(b, -1, h * w)                       # (B,C/8,N)
    attention = torch.softmax(torch.bmm(q, k), dim=-1)               # (B,N,N)
    v = self.value_conv(x).reshape(b, -1, h * w)                     # (B,C,N)
    out = torch.bmm(v, attention.permute(0, 2, 1)).reshape(b, c, h, w)
    return self.gamma * out + x


def _conv_out(size: int, kernel: int, stride: int) -> int:
  return (size + 2 * 2 - kernel) // stride + 1


def attention_cnn(num_classes: int = 10, block: str = "se",
                  se_reduction: int = 16, dropout_rate: float = 0.6, *,
                  in_channels: int = 1, image_size=28,
                  dtype=None) -> nn.Sequential:
  """The seed's ``nn.Sequential``; arguments are
  ``jaxattn.models.mnist_cnn.AttentionCNN``'s fields plus ``in_channels`` and
  ``image_size`` (int or (H, W); 28 gives the seed's Linear(1568 -> 200)).

  Takes NCHW float images (the seed: raw 0..255), returns log-probabilities.
  """
  del dtype  # Flax compute dtype; the PyTorch model runs in its own dtype.
  if block not in _BLOCKS:
    raise ValueError(f"Unknown block {block!r}; expected one of {list(_BLOCKS)}.")
  layers: list[nn.Module] = []
  channels = in_channels
  h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
  for features, kernel, stride in _CONVS:
    layers += [nn.Conv2d(channels, features, kernel, stride=stride, padding=2,
                         bias=False),
               nn.BatchNorm2d(features), nn.ReLU(inplace=True)]
    if block == "se":
      layers.append(SEBlock(features, se_reduction))
    elif block == "sa":
      layers.append(SelfAttentionBlock(features))
    else:
      layers.append(nn.Identity())
    channels = features
    h, w = _conv_out(h, kernel, stride), _conv_out(w, kernel, stride)
  layers += [nn.Flatten(), nn.Linear(channels * h * w, 200, bias=False),
             nn.BatchNorm1d(200), nn.ReLU(inplace=True),
             nn.Dropout(dropout_rate), nn.Linear(200, num_classes),
             nn.LogSoftmax(dim=1)]
  model = nn.Sequential(*layers)
  for m in model.modules():  # The seed: BN weights filled with 1 and frozen.
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
      nn.init.ones_(m.weight)
      m.weight.requires_grad_(False)
  return model


def se_cnn(num_classes: int = 10, block: str = "se", **kwargs) -> nn.Sequential:
  """Notebook 4.2: the CNN with ``SEBlock``s (354,446 parameters)."""
  return attention_cnn(num_classes, block, **kwargs)


def sa_cnn(num_classes: int = 10, block: str = "sa", **kwargs) -> nn.Sequential:
  """Notebook 4.3: the CNN with ``SelfAttentionBlock``s (356,525 parameters)."""
  return attention_cnn(num_classes, block, **kwargs)
