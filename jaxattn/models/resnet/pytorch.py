"""Seed 001 (SL-ResNet) and GSoP-Net in PyTorch, torchvision's layout.

torchvision is not imported (its PyPI wheel does not import beside this
torch); the blocks are written here with torchvision's attribute names, so a
state_dict is exactly torchvision's plus the attention modules' keys::

  conv1.weight  bn1.{weight,bias,running_mean,running_var,num_batches_tracked}
  layerS.B.conv{1,2[,3]}.weight  layerS.B.bn{1,2[,3]}.*      (S = 1..4, B = 0..)
  layerS.0.downsample.0.weight  layerS.0.downsample.1.*      (when shapes change)
  layerS.B.sl.fc.weight [C,C]                               (attention="sl")
  layerS.B.{conv_for_DR,bn_for_DR,row_bn,row_conv_group,fc_adapt_channels}.*
                                                            (attention="gsop")
  fc.{0,2,4}.{weight,bias}      (head "slresnet")  or  fc.{weight,bias} ("linear")

The GSoP tensors sit directly under ``layerS.B.`` as in GSoP-Net's official
``Bottleneck`` (no ``gsop.`` element; Flax nests them under ``gsop/``).
``slresnet(attention="none", head="linear")`` has exactly torchvision's
``resnet{34,50,101,152}`` keys (320 for ResNet-50), so torchvision ImageNet
checkpoints load into it with ``strict=True``, and into the SL model with
``strict=False`` (missing: the ``sl.fc`` and head keys only).

Eval-mode numerics equal ``jaxattn.models.resnet`` (``SLResNet``,
``GSoPResNet``, ``ResNet``): the attention module sits after the block's last
BatchNorm, before the residual add; BN eps 1e-5; global average pool.
"""

from collections.abc import Sequence

import torch
from torch import nn

ATTENTIONS = ("sl", "gsop", "none")
BLOCKS = ("basic", "bottleneck")
HEADS = ("slresnet", "linear")
ATTENTION_IN = ("all", "last")

# depth -> (stage sizes, block), as torchvision's resnet34/50/101/152.
DEPTHS = {
    34: ((3, 4, 6, 3), "basic"),
    50: ((3, 4, 6, 3), "bottleneck"),
    101: ((3, 4, 23, 3), "bottleneck"),
    152: ((3, 8, 36, 3), "bottleneck"),
}

GSOP_DIM = 128  # GSoP-Net's att_dim.


def _check_choice(what: str, value, valid) -> None:
  if value not in valid:
    raise ValueError(f"Unknown {what} {value!r}; valid: "
                     f"{', '.join(map(str, valid))}.")


class SLayer(nn.Module):
  """Seed 001's Streamlined Attention Module: ``x * fc(GAP(x))``, fc C x C,
  no bias, no nonlinearity (the gate is unbounded)."""

  def __init__(self, channels: int):
    super().__init__()
    self.fc = nn.Linear(channels, channels, bias=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


def covariance(x: torch.Tensor) -> torch.Tensor:
  """GSoP-Net's ``CovpoolLayer`` on (B, d, H, W): the biased (1/M) channel
  covariance (B, d, d), computed as ``Xc Xc^T / M`` in float32."""
  b, d, h, w = x.shape
  x = x.reshape(b, d, h * w).float()
  xc = x - x.mean(dim=2, keepdim=True)
  return xc @ xc.transpose(1, 2) / (h * w)


class _Block(nn.Module):
  """Attention plumbing shared by both blocks (SLayer or GSoP attributes)."""

  expansion = 1

  def _init_attention(self, attention: str, planes: int) -> None:
    _check_choice("attention", attention, ATTENTIONS)
    self.attention = attention
    channels = planes * self.expansion
    if attention == "sl":
      self.sl = SLayer(channels)
    elif attention == "gsop":
      # GSoP-Net's Bottleneck attributes, channel mode '1'; stride-2 dimension
      # reduction where the block width (planes) is <= 64.
      d = GSOP_DIM
      self.relu_normal = nn.ReLU(inplace=False)
      self.conv_for_DR = nn.Conv2d(channels, d, 1,
                                   stride=2 if planes <= 64 else 1, bias=True)
      self.bn_for_DR = nn.BatchNorm2d(d)
      self.row_bn = nn.BatchNorm2d(d)
      self.row_conv_group = nn.Conv2d(d, 4 * d, (d, 1), groups=d, bias=True)
      self.fc_adapt_channels = nn.Conv2d(4 * d, channels, 1, bias=True)
      self.sigmoid = nn.Sigmoid()

  def _chan_att(self, x: torch.Tensor) -> torch.Tensor:
    """GSoP-Net's ``chan_att``: the (B, C, 1, 1) sigmoid gate."""
    y = self.relu_normal(x)
    y = self.relu(self.bn_for_DR(self.conv_for_DR(y)))
    cov = covariance(y).to(x.dtype)
    y = self.row_bn(cov[..., None])  # (B, d, d, 1): channels are the rows.
    y = self.fc_adapt_channels(self.row_conv_group(y))
    return self.sigmoid(y)

  def _attend(self, x: torch.Tensor) -> torch.Tensor:
    if self.attention == "sl":
      return self.sl(x)
    if self.attention == "gsop":
      return x * self._chan_att(x)
    return x

  def _init_shortcut_and_attention(self, downsample, stride: int,
                                   attention: str, planes: int) -> None:
    # After the convolutions: torchvision's attribute (state_dict) order.
    self.downsample = downsample
    self.stride = stride
    self._init_attention(attention, planes)

  def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
    return x if self.downsample is None else self.downsample(x)

  def _attend_and_add(self, out: torch.Tensor,
                      identity: torch.Tensor) -> torch.Tensor:
    return self.relu(self._attend(out) + identity)


class BasicBlock(_Block):
  """torchvision's ResNet-18/34 block; attention after bn2."""

  expansion = 1

  def __init__(self, inplanes: int, planes: int, stride: int = 1,
               downsample: nn.Module | None = None, attention: str = "sl"):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1,
                           bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self._init_shortcut_and_attention(downsample, stride, attention, planes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = self.relu(self.bn1(self.conv1(x)))
    return self._attend_and_add(self.bn2(self.conv2(out)), self._shortcut(x))


class Bottleneck(_Block):
  """torchvision v1.5 bottleneck (stride on the 3x3); attention after bn3."""

  expansion = 4

  def __init__(self, inplanes: int, planes: int, stride: int = 1,
               downsample: nn.Module | None = None, attention: str = "sl"):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1,
                           bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self._init_shortcut_and_attention(downsample, stride, attention, planes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    return self._attend_and_add(self.bn3(self.conv3(out)), self._shortcut(x))


class ResNet(nn.Module):
  """torchvision's ResNet with block attention and a choice of head.

  Arguments are ``jaxattn.models.resnet.ResNet``'s fields (``stage_sizes``,
  ``block``, ``attention``, ``attention_in``, ``stage_strides``, ``head``,
  ``num_classes``, ``width``) plus ``in_channels``; ``dtype`` and ``remat``
  are accepted and ignored. Takes NCHW float images, returns logits.
  """

  def __init__(self, stage_sizes: Sequence[int], block: str = "bottleneck",
               attention: str = "sl", attention_in: str = "all",
               stage_strides: Sequence[int] = (1, 2, 2, 2),
               head: str = "slresnet", num_classes: int = 1000,
               width: int = 64, *, in_channels: int = 3, dtype=None,
               remat: bool = False):
    del dtype, remat  # Flax-only options.
    super().__init__()
    _check_choice("block", block, BLOCKS)
    _check_choice("attention", attention, ATTENTIONS)
    _check_choice("attention_in", attention_in, ATTENTION_IN)
    _check_choice("head", head, HEADS)
    if len(stage_strides) < len(stage_sizes):
      raise ValueError(f"stage_strides={tuple(stage_strides)} gives fewer "
                       f"strides than stage_sizes={tuple(stage_sizes)}.")
    block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
    self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3,
                           bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    inplanes = width
    self.num_stages = len(stage_sizes)
    for s, size in enumerate(stage_sizes):
      planes = width * 2**s
      blocks = []
      for b in range(size):
        stride = stage_strides[s] if b == 0 else 1
        downsample = None
        if stride != 1 or inplanes != planes * block_cls.expansion:
          downsample = nn.Sequential(
              nn.Conv2d(inplanes, planes * block_cls.expansion, 1,
                        stride=stride, bias=False),
              nn.BatchNorm2d(planes * block_cls.expansion))
        with_attention = attention_in == "all" or b == size - 1
        blocks.append(block_cls(inplanes, planes, stride, downsample,
                                attention if with_attention else "none"))
        inplanes = planes * block_cls.expansion
      setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    if head == "linear":
      self.fc = nn.Linear(inplanes, num_classes)
    else:  # The seed's head: no activations between the Linears.
      self.fc = nn.Sequential(nn.Linear(inplanes, 1024), nn.Dropout(0.5),
                              nn.Linear(1024, 512), nn.Dropout(0.5),
                              nn.Linear(512, num_classes))
    # torchvision's (and GSoP-Net's) init; Linear layers keep the defaults.
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
      elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
    for s in range(self.num_stages):
      x = getattr(self, f"layer{s + 1}")(x)
    x = torch.flatten(self.avgpool(x), 1)
    return self.fc(x)


def _check_depth(model: str, depth: int) -> None:
  if depth not in DEPTHS:
    raise ValueError(f"Unsupported depth {depth} for {model!r}; valid depths: "
                     f"{', '.join(map(str, DEPTHS))}.")


def slresnet(num_classes: int = 1000, depth: int = 50, attention: str = "sl",
             head: str | None = None, stage_sizes: Sequence[int] | None = None,
             width: int = 64, **kwargs) -> ResNet:
  """Seed 001's SL-ResNet-34/50/101/152 (``jaxattn.models.resnet.SLResNet``).

  An SLayer in every block; ``head=None`` is the seed's (three Linears for
  50/101/152, one for 34). ``attention="none", head="linear"`` is torchvision's
  plain ResNet with its exact state_dict keys.
  """
  _check_depth("slresnet", depth)
  sizes, block = DEPTHS[depth]
  head = head or ("linear" if depth == 34 else "slresnet")
  return ResNet(stage_sizes or sizes, block, attention, "all", (1, 2, 2, 2),
                head, num_classes, width, **kwargs)


def gsop_resnet(num_classes: int = 1000, depth: int = 50,
                attention_in: str = "last", layer4_stride: int = 1,
                stage_sizes: Sequence[int] | None = None, width: int = 64,
                **kwargs) -> ResNet:
  """GSoP-Net1 (``jaxattn.models.resnet.GSoPResNet``): GSoP in the last block
  of each stage, layer4 stride 1, global average pool, one Linear
  (28,285,224 parameters for ResNet-50 at K=1000)."""
  _check_depth("gsop_resnet", depth)
  sizes, block = DEPTHS[depth]
  return ResNet(stage_sizes or sizes, block, "gsop", attention_in,
                (1, 2, 2, layer4_stride), "linear", num_classes, width,
                **kwargs)
