"""Seed 001: ResNets with the Streamlined Attention Module, and GSoP-Net.

Both are torchvision ResNets (v1.5: the stride sits on the 3x3 conv) with an
attention module inside residual blocks, after the last BatchNorm and before
the residual add (``specs/seeds.md``, "Seed 001" and "Seed 003" 2c):

* ``"sl"``: the seed's ``SLayer``, exactly ``out = x * (GAP(x) @ W)`` with W a
  full C x C matrix and no bias. No reduction, no ReLU, no sigmoid: the gate is
  unbounded and may be negative. This is the whole "streamlined attention
  module"; the README's "second-order pooling" is only this product.
* ``"gsop"``: the GSoP-Net channel block (``attention_blocks.GSoP``), with a
  stride-2 dimension-reduction conv in blocks whose planes are <= 64. The
  registered ``gsop_resnet`` follows the official GSoP-Net1 code: GSoP only in
  the last block of each stage, and ``layer4`` with stride 1.
* ``"none"``: plain torchvision ResNet (its parameter counts are tested).

Seed quirks reproduced on purpose:

* The ``slresnet`` head is ``Linear(2048,1024) -> Dropout(0.5) ->
  Linear(1024,512) -> Dropout(0.5) -> Linear(512,K)`` with *no activations*.
  ResNet-34 keeps torchvision's single Linear.
* The seed ran with K=1000 logits whatever the dataset (``resnet50(pretrained=
  True)`` without ``num_classes``), hence ``num_classes=1000`` by default.

PyTorch numerics and init: explicit paddings (7x7/2 stem pad 3, 3x3 convs pad
1, max pool 3x3/2 pad 1 with -inf padding), BatchNorm momentum 0.1 (Flax 0.9)
and eps 1e-5, convs kaiming_normal(fan_out, relu) untruncated, BN scale 1 and
bias 0, every Linear PyTorch's default U(+-1/sqrt(fan_in)) for weight and bias.
One known difference: PyTorch updates ``running_var`` with the *unbiased*
batch variance (times n/(n-1)), Flax with the biased one; eval-mode outputs
from the same statistics are identical.

Parameter names (Flax path <- torchvision state_dict key; S = 1..4 is the
stage, B = 0.. the block within it; the downsample exists in block 0 only):

  params/conv1/kernel [7,7,3,64]       <- conv1.weight [64,3,7,7]
  params/bn1/{scale,bias}              <- bn1.{weight,bias}
  batch_stats/bn1/{mean,var}           <- bn1.{running_mean,running_var}
  params/layerS_B/convK/kernel         <- layerS.B.convK.weight    (K = 1,2[,3])
  params/layerS_B/bnK/{scale,bias}     <- layerS.B.bnK.{weight,bias}
  batch_stats/layerS_B/bnK/{mean,var}  <- layerS.B.bnK.{running_mean,running_var}
  params/layerS_0/downsample_0/kernel  <- layerS.0.downsample.0.weight
  params/layerS_0/downsample_1/{scale,bias}
                                       <- layerS.0.downsample.1.{weight,bias}
  batch_stats/layerS_0/downsample_1/{mean,var}
                                       <- layerS.0.downsample.1.{running_mean,running_var}
  params/layerS_B/sl/fc/kernel [C,C]   <- layerS.B.sl.fc.weight [C,C] .T
  params/layerS_B/gsop/...             <- GSoP-Net's block attributes (``conv_for_DR``,
                                          ``row_bn``, ...; see ``attention_blocks.GSoP``)
  params/fc_{0,2,4}/kernel, bias       <- fc.{0,2,4}.weight .T, bias  ("slresnet" head)
  params/fc/kernel, bias               <- fc.weight .T, fc.bias       ("linear" head)

As a rule: drop the collection, turn every module name's trailing ``_i`` into
``.i`` (``layerS_B`` -> ``layerS.B``, ``downsample_i`` -> ``downsample.i``,
``fc_i`` -> ``fc.i``) and join with ``.``. Leaves: ``kernel`` -> ``weight``,
``scale`` -> ``weight``, ``bias`` -> ``bias``, ``mean`` -> ``running_mean``,
``var`` -> ``running_var``; ``num_batches_tracked`` has no Flax counterpart
(skip it: the R50 state_dict's 340 entries are 287 Flax leaves + 53 of them).
Layouts: a conv weight [O,I,kh,kw] becomes the kernel [kh,kw,I,O]
(``weight.transpose(2, 3, 1, 0)``; back with ``kernel.transpose(3, 2, 0, 1)``);
a Linear weight [out,in] becomes the Dense kernel [in,out] (``weight.T``).
BatchNorm vectors copy as they are. GSoP-Net's official checkpoints name the
block attention's tensors directly under ``layerS.B.`` (no ``gsop.``), so a
converter drops that one path element for them. The seed's legacy ImageNet
checkpoints (IMAGENET1K_V1) fill every conv/BN/downsample tensor; ``sl.fc`` and
``fc.*`` stay at their init, as in the seed.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxattn.configlib import ConfigError
from jaxattn.models import kernels, layers
from jaxattn.models.attention_blocks import GSoP

Array = jax.Array

ATTENTIONS = ("sl", "gsop", "none")
BLOCKS = ("basic", "bottleneck")
HEADS = ("slresnet", "linear")
ATTENTION_IN = ("all", "last")

# depth -> (stage sizes, block), as torchvision's resnet34/50/101/152.
DEPTHS: dict[int, tuple[tuple[int, ...], str]] = {
    34: ((3, 4, 6, 3), "basic"),
    50: ((3, 4, 6, 3), "bottleneck"),
    101: ((3, 4, 23, 3), "bottleneck"),
    152: ((3, 8, 36, 3), "bottleneck"),
}

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), a plain
# (untruncated) normal with variance 2 / (kh * kw * out_channels).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features: int, kernel: int, stride: int, name: str,
          dtype: Any) -> nn.Module:
  """``torch.nn.Conv2d(kernel, stride, padding=kernel // 2, bias=False)``.

  ``nn.Conv``'s parameter (``kernel`` [k, k, in, out]) with torchvision's
  init. Explicit padding, never "SAME": with stride 2 on an even input Flax's
  SAME pads (0, 1), PyTorch pads (1, 1), and every output shifts by a pixel.
  """
  pad = kernel // 2
  return layers.Conv2d(features, (kernel, kernel), (stride, stride),
                       ((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                       kernel_init=conv_kernel_init, name=name)


def _dense(features: int, name: str) -> nn.Module:
  """A float32 ``torch.nn.Linear`` for the head: logits stay exact for the loss."""
  return layers.Linear(features, jnp.float32, name=name)


def max_pool_3x3_s2(x: Array) -> Array:
  """``MaxPool2d(3, stride=2, padding=1)``: the padding is -inf, never 0.

  The window max reduces from -inf and pads with that init value, so the
  padding cannot win a window, as in PyTorch (tested with negative inputs);
  under the CPU kernels its gradient is routed as XLA does, faster.
  """
  return kernels.max_pool_3x3_s2(x)


class SLayer(nn.Module):
  """The Streamlined Attention Module: ``x * (GAP(x) @ W)``, W full C x C.

  The gate is linear in GAP(x), unbounded and may be negative, so the output
  is bilinear in x. The Dense is named ``fc`` (the seed's ``sl.fc``); its
  kernel is ``sl.fc.weight.T``.
  """

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    # Average in float32: a sum over H*W is too long for a bf16 accumulator.
    y = jnp.mean(x, axis=(1, 2), dtype=jnp.float32)
    y = layers.Linear(c, self.dtype, use_bias=False, name="fc")(y)
    return x * y[:, None, None, :].astype(x.dtype)


def _attention(kind: str, planes: int, x: Array, train: bool, dtype: Any) -> Array:
  """Applies the block's attention to x (after the last BN, before the add)."""
  if kind == "sl":
    return SLayer(dtype, name="sl")(x)
  if kind == "gsop":
    # GSoP-Net: stride-2 dimension reduction in the high-resolution stage
    # only. Its ResNet init loop re-initialises every Conv2d, the GSoP ones
    # included, with torchvision's kaiming_normal(fan_out); biases keep
    # PyTorch's default.
    stride = 2 if planes <= 64 else 1
    return GSoP(reduced_dim=128, dim_reduction_stride=stride, dtype=dtype,
                kernel_init=conv_kernel_init, name="gsop")(x, train=train)
  if kind == "none":
    return x
  raise ConfigError(f"Unknown attention {kind!r}; valid: {', '.join(ATTENTIONS)}.")


class _Block(nn.Module):
  """Shared fields and the downsample shortcut of both residual blocks."""

  planes: int
  stride: int = 1
  attention: str = "sl"
  dtype: Any = jnp.float32

  expansion = 1

  def _shortcut(self, x: Array, train: bool) -> Array:
    """torchvision's ``downsample``: conv1x1 stride s + BN, when shapes change."""
    out_channels = self.planes * self.expansion
    if self.stride == 1 and x.shape[-1] == out_channels:
      return x
    x = _conv(out_channels, 1, self.stride, "downsample_0", self.dtype)(x)
    return layers.batch_norm(train, "downsample_1", self.dtype)(x)


class BasicBlock(_Block):
  """ResNet-18/34 block; the attention module (``SLayer(planes)``) follows bn2.

  ``train`` is positional so ``nn.remat`` can mark it static.
  """

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    out = _conv(self.planes, 3, self.stride, "conv1", self.dtype)(x)
    out = nn.relu(layers.batch_norm(train, "bn1", self.dtype)(out))
    out = _conv(self.planes, 3, 1, "conv2", self.dtype)(out)
    out = layers.batch_norm(train, "bn2", self.dtype)(out)
    out = _attention(self.attention, self.planes, out, train, self.dtype)
    return nn.relu(out + self._shortcut(x, train))


class Bottleneck(_Block):
  """torchvision v1.5 bottleneck (stride on the 3x3) with attention after bn3.

  conv1 1x1 -> bn1 -> relu -> conv2 3x3/s -> bn2 -> relu -> conv3 1x1 (4p) ->
  bn3 -> attention(4p) -> + downsample(x) -> relu.
  """

  expansion = 4

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    out = _conv(self.planes, 1, 1, "conv1", self.dtype)(x)
    out = nn.relu(layers.batch_norm(train, "bn1", self.dtype)(out))
    out = _conv(self.planes, 3, self.stride, "conv2", self.dtype)(out)
    out = nn.relu(layers.batch_norm(train, "bn2", self.dtype)(out))
    out = _conv(self.planes * 4, 1, 1, "conv3", self.dtype)(out)
    out = layers.batch_norm(train, "bn3", self.dtype)(out)
    out = _attention(self.attention, self.planes, out, train, self.dtype)
    return nn.relu(out + self._shortcut(x, train))


def _check_choice(what: str, value: str, valid: Sequence[str]) -> None:
  if value not in valid:
    raise ConfigError(f"Unknown {what} {value!r}; valid: {', '.join(valid)}.")


def _check_strides(stage_sizes: Sequence[int], stage_strides: Sequence[int]) -> None:
  if len(stage_strides) < len(stage_sizes):
    raise ConfigError(
        f"stage_strides={tuple(stage_strides)} gives fewer strides than the "
        f"{len(stage_sizes)} stages of stage_sizes={tuple(stage_sizes)}.")


def _resnet(images: Array, *, train: bool, stage_sizes: Sequence[int],
            stage_strides: Sequence[int], block: str, attention: str,
            attention_in: str, head: str, num_classes: int, width: int,
            dtype: Any, remat: bool) -> Array:
  """The torchvision ResNet forward; call from a compact method (the modules
  created here become children of that module, named as torchvision's)."""
  layers.check_images(images, 1)
  block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
  if remat:  # Recompute activations in the backward pass; ``train`` is static.
    block_cls = nn.remat(block_cls, static_argnums=(2,))
  x = _conv(width, 7, 2, "conv1", dtype)(images)
  x = nn.relu(layers.batch_norm(train, "bn1", dtype)(x))
  x = max_pool_3x3_s2(x)
  for s, size in enumerate(stage_sizes):
    for b in range(size):
      stride = stage_strides[s] if b == 0 else 1
      with_attention = attention_in == "all" or b == size - 1
      x = block_cls(planes=width * 2**s, stride=stride,
                    attention=attention if with_attention else "none",
                    dtype=dtype, name=f"layer{s + 1}_{b}")(x, train)
  x = jnp.mean(x, axis=(1, 2), dtype=jnp.float32)  # AdaptiveAvgPool2d(1)
  if head == "linear":
    return _dense(num_classes, "fc")(x)
  # The seed's head: three Linears with dropout and no activation in between.
  x = _dense(1024, "fc_0")(x)
  x = nn.Dropout(0.5, deterministic=not train)(x)
  x = _dense(512, "fc_2")(x)
  x = nn.Dropout(0.5, deterministic=not train)(x)
  return _dense(num_classes, "fc_4")(x)


class ResNet(nn.Module):
  """A torchvision ResNet with pluggable block attention and head.

  Takes NHWC float images, returns float32 logits (B, num_classes). ``dtype``
  is the compute dtype; parameters are float32, and the pooling and the head
  run in float32.

  ``attention_in``: "all" puts the attention module in every block (seed
  001), "last" only in the last block of each stage (GSoP-Net). The first
  block of stage s has stride ``stage_strides[s]`` (torchvision: 1, 2, 2, 2).
  ``width`` (64 in every real ResNet) scales the stem and all stage widths;
  smaller values are for tests only. ``remat`` recomputes block activations in
  the backward pass (for ResNet-152 at large batches); names are unchanged.
  """

  stage_sizes: Sequence[int]
  block: str = "bottleneck"
  attention: str = "sl"
  attention_in: str = "all"
  stage_strides: Sequence[int] = (1, 2, 2, 2)
  head: str = "slresnet"
  num_classes: int = 1000
  width: int = 64
  dtype: Any = jnp.float32
  remat: bool = False

  def __post_init__(self):
    _check_choice("block", self.block, BLOCKS)
    _check_choice("attention", self.attention, ATTENTIONS)
    _check_choice("attention_in", self.attention_in, ATTENTION_IN)
    _check_choice("head", self.head, HEADS)
    _check_strides(self.stage_sizes, self.stage_strides)
    super().__post_init__()

  @nn.compact
  def __call__(self, images: Array, *, train: bool = False) -> Array:
    return _resnet(images, train=train, stage_sizes=self.stage_sizes,
                   stage_strides=self.stage_strides, block=self.block,
                   attention=self.attention, attention_in=self.attention_in,
                   head=self.head, num_classes=self.num_classes,
                   width=self.width, dtype=self.dtype, remat=self.remat)


# The PyTorch twins pool globally: they do not need the image size.
def _check_depth(model: str, depth: int) -> None:
  if depth not in DEPTHS:
    raise ConfigError(
        f"Unsupported depth {depth} for {model!r}; valid depths: "
        f"{', '.join(map(str, DEPTHS))}.")


class SLResNet(nn.Module):
  """Seed 001: SL-ResNet-34/50/101/152 as the authors built it.

  An SLayer in every block. ``head=None`` picks the seed's: the three-Linear
  head for 50/101/152 and torchvision's single Linear for 34. ``num_classes``
  defaults to the 1000 logits the seed actually trained with.
  """

  num_classes: int = 1000
  depth: int = 50
  attention: str = "sl"
  head: str | None = None
  # Tiny variants for smoke runs and tests: blocks per stage instead of the
  # depth's, and the stem width (64 in every real ResNet).
  stage_sizes: Sequence[int] | None = None
  width: int = 64
  dtype: Any = jnp.float32
  remat: bool = False

  def __post_init__(self):
    _check_depth("slresnet", self.depth)
    _check_choice("attention", self.attention, ATTENTIONS)
    if self.head is not None:
      _check_choice("head", self.head, HEADS)
    super().__post_init__()

  @nn.compact
  def __call__(self, images: Array, *, train: bool = False) -> Array:
    stage_sizes, block = DEPTHS[self.depth]
    head = self.head or ("linear" if self.depth == 34 else "slresnet")
    return _resnet(images, train=train,
                   stage_sizes=self.stage_sizes or stage_sizes,
                   stage_strides=(1, 2, 2, 2), block=block,
                   attention=self.attention, attention_in="all", head=head,
                   num_classes=self.num_classes, width=self.width,
                   dtype=self.dtype, remat=self.remat)


class GSoPResNet(nn.Module):
  """GSoP-Net1 as in the official code (DERIVED; seed 003 has none).

  ``ZilinGao/Global-Second-order-Pooling-Convolutional-Networks`` @ d3a757a,
  ``main.py`` and ``torchvision/models/resnet.py``:

  * a GSoP block only in the *last* block of each stage (``attpos`` =
    ``['0']*(n-1) + ['1']`` per stage), so 4 GSoP blocks in ResNet-50/101;
  * ``layer4`` with stride 1 (output stride 16; its ``AvgPool2d(14)`` is a
    global pool at 224x224), then GAP and a single Linear.

  This gives 28,285,224 parameters for ResNet-50 at K=1000, the paper's
  28.29M. ``attention_in="all"`` and ``layer4_stride=2`` give the variant
  with a GSoP block in every block of a standard torchvision ResNet.
  """

  num_classes: int = 1000
  depth: int = 50
  attention_in: str = "last"
  layer4_stride: int = 1
  stage_sizes: Sequence[int] | None = None  # Tiny variants, as in SLResNet.
  width: int = 64
  dtype: Any = jnp.float32
  remat: bool = False

  def __post_init__(self):
    _check_depth("gsop_resnet", self.depth)
    _check_choice("attention_in", self.attention_in, ATTENTION_IN)
    super().__post_init__()

  @nn.compact
  def __call__(self, images: Array, *, train: bool = False) -> Array:
    stage_sizes, block = DEPTHS[self.depth]
    return _resnet(images, train=train,
                   stage_sizes=self.stage_sizes or stage_sizes,
                   stage_strides=(1, 2, 2, self.layer4_stride), block=block,
                   attention="gsop", attention_in=self.attention_in,
                   head="linear", num_classes=self.num_classes,
                   width=self.width, dtype=self.dtype, remat=self.remat)

