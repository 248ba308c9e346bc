"""Seed 003: the MNIST CNN with SE or SAGAN self-attention blocks.

The teaching notebooks' ``nn.Sequential`` (``specs/seeds.md``, "Seed 003"
2a/2b), channels-last here:

  idx  layer                                   output (NCHW in the seed)
  0    Conv2d(1->12, k3, pad 2, no bias)       12x30x30
  1,2  BatchNorm2d(12), ReLU
  3    block(12)                               SEBlock or SelfAttentionBlock
  4    Conv2d(12->24, k6, stride 2, pad 2, no bias)   24x15x15
  5-7  BatchNorm2d(24), ReLU, block(24)
  8    Conv2d(24->32, k6, stride 2, pad 2, no bias)   32x7x7
  9-11 BatchNorm2d(32), ReLU, block(32)
  12   Flatten                                 1568
  13   Linear(1568->200, no bias)
  14-16 BatchNorm1d(200), ReLU, Dropout(0.6)
  17   Linear(200->10)
  18   LogSoftmax(dim=1)

Registered as ``se_cnn`` (SE blocks, 354,446 params) and ``sa_cnn`` (SAGAN
blocks, 356,525 params); ``AttentionCNN(block="none")`` is the plain CNN
(354,270). Counts are PyTorch's ``parameters()``, which, like Flax's
``params`` collection, excludes the BN running statistics (``batch_stats``).

Seed quirks reproduced on purpose:

* **Raw pixels.** The seed feeds grey values 0..255 as float32, with no /255
  and no normalisation; the model does not rescale, the data config does (or
  does not). The BN after the first conv absorbs the scale.
* **Frozen BN scales.** Every BN weight is filled with 1.0 (Flax's default
  init too) and set ``requires_grad=False``; only BN biases train. Flax has no
  ``requires_grad``: the trainer must freeze the parameters whose path matches
  ``FROZEN_PARAMS_REGEX`` (``bn_{i}/scale``, 268 values in all): set
  ``config.frozen_params`` to it (``optim.py`` then gives them
  ``optax.set_to_zero()``). Without it the scales train and the model is not
  the seed's (354,178 / 356,257 trainable values are the seed's).
* **SE with zero width.** ``SEBlock(12)`` has C//16 = 0 hidden units: its
  gate is the constant sigmoid(0) = 0.5 (see ``SqueezeExcitation``).
* **Log-probabilities out.** The seed ends with ``LogSoftmax``; this model
  returns log_softmax(logits) in float32. They are valid logits for a softmax
  cross-entropy (log_softmax is idempotent), so the usual loss equals the
  seed's ``CrossEntropyLoss`` on its LogSoftmax outputs (= NLL), and the
  argmax is unchanged.
* **Channel-first flatten.** The map is transposed NHWC -> NCHW before the
  flatten, so feature f = c*49 + h*7 + w, PyTorch's order: a converted
  ``13.weight [200, 1568]`` is then just transposed, without permuting its
  1568 columns. (Flattening NHWC directly would be an equally good model but
  would silently scramble a converted checkpoint.)
* **Dropout 0.6** before the last layer, active only with ``train=True``
  (rng stream ``dropout``).

Parameter names (Flax, under ``params`` unless noted) <- PyTorch state_dict
key. Each submodule's suffix is its ``nn.Sequential`` index:

  conv_0/kernel [3,3,1,12]       <- 0.weight [12,1,3,3].transpose(2, 3, 1, 0)
  bn_1/{scale,bias}              <- 1.{weight,bias}
  batch_stats bn_1/{mean,var}    <- 1.{running_mean,running_var}
                                    (1.num_batches_tracked is dropped)
  se_3/fc_0/kernel [12,0]        <- 3.fc.0.weight [0,12].T      (SE model)
  se_3/fc_2/kernel [0,12]        <- 3.fc.2.weight [12,0].T
  sa_3/{query,key,value}_conv/kernel [1,1,C,out]
                                 <- 3.{query,key,value}_conv.weight
                                    [out,C,1,1].transpose(2, 3, 1, 0)  (SA model)
  sa_3/{query,key,value}_conv/bias <- 3.{...}_conv.bias
  sa_3/gamma [1]                 <- 3.gamma [1]
  conv_4, bn_5, se_7 / sa_7      <- 4.*, 5.*, 7.*  (same rules)
  conv_8, bn_9, se_11 / sa_11    <- 8.*, 9.*, 11.*
  fc_13/kernel [1568,200]        <- 13.weight [200,1568].T
  bn_14/*                        <- 14.* (BatchNorm1d, same rule)
  fc_17/kernel [200,K], fc_17/bias <- 17.weight [K,200].T, 17.bias

I.e. ``{kind}_{i}`` <-> ``{i}``; within a block, ``fc_0`` <-> ``fc.0``.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxattn.configlib import ConfigError
from jaxattn.models import layers
from jaxattn.models.attention_blocks import SelfAttention2D, SqueezeExcitation

Array = jax.Array

# Parameters the seed freezes (requires_grad=False): every BatchNorm scale.
# Matches '/'-joined param paths such as "bn_14/scale" (re.fullmatch or
# re.search alike), and nothing else in these models.
FROZEN_PARAMS_REGEX = r"(.*/)?bn_\d+/scale"

_BLOCKS = ("se", "sa", "none")

# (Sequential index of the conv, out channels, kernel, stride); padding is 2.
_CONVS = ((0, 12, 3, 1), (4, 24, 6, 2), (8, 32, 6, 2))


class AttentionCNN(nn.Module):
  """Seed 003's MNIST CNN; ``block`` picks "se", "sa" or "none".

  Takes NHWC float images (the seed: 28x28x1, raw 0..255), returns float32
  log-probabilities (B, num_classes). ``dtype`` is the compute dtype;
  parameters are always float32, and the last Linear and the log-softmax run
  in float32. The 1568-wide flatten fixes the input size at 28x28 (other
  sizes fail at init-time shapes or with Flax's shape error on apply).
  """

  num_classes: int = 10
  block: str = "se"
  se_reduction: int = 16
  dropout_rate: float = 0.6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: Array, *, train: bool = False) -> Array:
    if self.block not in _BLOCKS:
      raise ConfigError(
          f"Unknown block {self.block!r}; expected one of {list(_BLOCKS)}.")
    layers.check_images(images, 1)
    x = images.astype(self.dtype)
    for idx, features, k, s in _CONVS:
      x = layers.conv(features, (k, k), k * k * x.shape[-1],
                      f"conv_{idx}", self.dtype, strides=(s, s),
                      padding=((2, 2), (2, 2)), use_bias=False)(x)
      x = nn.relu(layers.batch_norm(train, f"bn_{idx + 1}",
                                    self.dtype)(x))
      if self.block == "se":
        x = SqueezeExcitation(self.se_reduction, dtype=self.dtype,
                              name=f"se_{idx + 3}")(x)
      elif self.block == "sa":
        x = SelfAttention2D(self.dtype, name=f"sa_{idx + 3}")(x)
    # PyTorch's (C, H, W) flatten order; see the module docstring.
    x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)
    x = layers.Linear(200, self.dtype, use_bias=False, name="fc_13")(x)
    x = nn.relu(layers.batch_norm(train, "bn_14", self.dtype)(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = layers.Linear(self.num_classes, jnp.float32,
                           name="fc_17")(x)
    return jax.nn.log_softmax(logits, axis=-1)


class SECNN(AttentionCNN):
  """Seed 003 notebook 4.2: the CNN with ``SEBlock``s (354,446 params)."""

  block: str = "se"


class SACNN(AttentionCNN):
  """Seed 003 notebook 4.3: the CNN with SAGAN blocks (356,525 params)."""

  block: str = "sa"
