"""Tests for jaxattn.models.mnist_cnn (seed 003's MNIST CNN with SE / SA blocks).

The numeric test converts the Flax variables into the seed's ``nn.Sequential``
state_dict with the mapping in the module docstring and runs the seed's
forward pass in NumPy (float64, NCHW, torch-shaped weights).
"""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxattn.models import create_model
from jaxattn.models.mnist_cnn import (FROZEN_PARAMS_REGEX, SACNN, SECNN,
                                      AttentionCNN)
from tests.test_attention_blocks import (_bn_eval, _random_like, seed_sa_block,
                                         seed_se_block)

_MNIST = (1, 28, 28, 1)


@functools.partial(jax.jit, static_argnums=0)
def _init(model, images):
  return model.init(jax.random.key(0), images)


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, variables, images):
  with jax.default_matmul_precision("float32"):
    return model.apply(variables, images)


@functools.partial(jax.jit, static_argnums=0)
def _apply_train(model, variables, images, dropout_seed):
  return model.apply(variables, images, train=True, mutable=["batch_stats"],
                     rngs={"dropout": jax.random.key(dropout_seed)})


def _images(batch=2, seed=0):
  """Raw 0..255 grey values, as the seed feeds them."""
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(0, 256, (batch, 28, 28, 1)), jnp.float32)


def _flat_params(model):
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(_MNIST)))
  return traverse_util.flatten_dict(shapes["params"], sep="/")


# --------------------------------------------------------------------------
# Parameter counts (specs/seeds.md, Seed 003 section 5, verified there).
# --------------------------------------------------------------------------


@pytest.mark.parametrize("model, total, trainable", [
    (SECNN(), 354_446, 354_178),
    (SACNN(), 356_525, 356_257),
    (AttentionCNN(block="none"), 354_270, 354_002),
])
def test_param_counts_match_seed(model, total, trainable):
  params = _flat_params(model)
  count = lambda keep: sum(math.prod(v.shape) for k, v in params.items() if keep(k))
  frozen = lambda k: re.fullmatch(FROZEN_PARAMS_REGEX, k) is not None
  assert count(lambda k: True) == total
  assert count(lambda k: not frozen(k)) == trainable
  # The frozen set is exactly the four BN scales: 12 + 24 + 32 + 200.
  assert sorted(k for k in params if frozen(k)) == [
      "bn_1/scale", "bn_14/scale", "bn_5/scale", "bn_9/scale"]
  assert count(frozen) == 268
  # Also matches with a collection prefix, as a trainer may see the path.
  assert re.search(FROZEN_PARAMS_REGEX, "params/bn_14/scale")


def test_se_layer_shapes_follow_seed_state_dict():
  params = _flat_params(SECNN())
  expected = {  # Flax kernel shapes of the seed's keys (spec section 4).
      "conv_0/kernel": (3, 3, 1, 12), "conv_4/kernel": (6, 6, 12, 24),
      "conv_8/kernel": (6, 6, 24, 32), "fc_13/kernel": (1568, 200),
      "fc_17/kernel": (200, 10), "fc_17/bias": (10,),
      "se_3/fc_0/kernel": (12, 0), "se_3/fc_2/kernel": (0, 12),
      "se_7/fc_0/kernel": (24, 1), "se_7/fc_2/kernel": (1, 24),
      "se_11/fc_0/kernel": (32, 2), "se_11/fc_2/kernel": (2, 32),
  }
  for key, shape in expected.items():
    assert params[key].shape == shape, key


def test_registry_builds_both_models():
  se, sa = create_model("se_cnn"), create_model("sa_cnn", num_classes=3)
  assert isinstance(se, SECNN) and se.block == "se"
  assert isinstance(sa, SACNN) and sa.block == "sa" and sa.num_classes == 3


def test_unknown_block_is_rejected():
  with pytest.raises(ValueError, match="'cbam'"):
    AttentionCNN(block="cbam").init(jax.random.key(0), jnp.zeros(_MNIST))


# --------------------------------------------------------------------------
# Outputs.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("model", [SECNN(), SACNN()])
def test_outputs_are_float32_log_probabilities(model):
  images = _images()
  log_probs = _apply(model, _init(model, images), images)
  assert log_probs.shape == (2, 10) and log_probs.dtype == jnp.float32
  np.testing.assert_allclose(jax.nn.logsumexp(log_probs, axis=-1), 0.0, atol=1e-5)


def test_train_mode_updates_batch_stats_and_uses_dropout():
  model = SECNN()
  images = _images()
  variables = _init(model, images)
  out, state = _apply_train(model, variables, images, 1)
  np.testing.assert_allclose(jax.nn.logsumexp(out, axis=-1), 0.0, atol=1e-5)
  for name in ("bn_1", "bn_5", "bn_9", "bn_14"):
    before, after = variables["batch_stats"][name], state["batch_stats"][name]
    assert not np.allclose(after["mean"], before["mean"]), name
    # Flax momentum 0.9 == PyTorch 0.1: new = 0.9 * old + 0.1 * batch.
    assert np.all(np.abs(after["mean"]) > 0) and np.all(after["var"] > 0.8)
  # Dropout 0.6 is on in train mode only: two dropout keys disagree.
  again, _ = _apply_train(model, variables, images, 2)
  assert not np.allclose(out, again)


# --------------------------------------------------------------------------
# Numerics against the seed's nn.Sequential.
# --------------------------------------------------------------------------


def _conv(x, weight, stride, pad):
  """Conv2d(bias=False) on NCHW x with an OIHW weight and symmetric padding."""
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  kh, kw = weight.shape[2:]
  win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
  return np.einsum("bchwij,ocij->bohw", win[:, :, ::stride, ::stride], weight)


def _seed_forward(variables, x, block):
  """The seed's Sequential (eval) on NCHW x, through its state_dict."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
  params, stats = p["params"], p["batch_stats"]
  sd = {}
  for i in (0, 4, 8):
    sd[f"{i}.weight"] = params[f"conv_{i}"]["kernel"].transpose(3, 2, 0, 1)
  sd["13.weight"] = params["fc_13"]["kernel"].T
  sd["17.weight"], sd["17.bias"] = params["fc_17"]["kernel"].T, params["fc_17"]["bias"]
  for i, stride, pad in ((0, 1, 2), (4, 2, 2), (8, 2, 2)):
    x = _conv(x, sd[f"{i}.weight"], stride, pad)
    x = np.maximum(_bn_eval(x, params[f"bn_{i + 1}"], stats[f"bn_{i + 1}"]), 0)
    if block == "se":
      x = seed_se_block(x, params[f"se_{i + 3}"])
    else:
      x = seed_sa_block(x, params[f"sa_{i + 3}"])
  x = x.reshape(x.shape[0], -1)  # nn.Flatten on (B, C, H, W)
  x = np.maximum(_bn_eval(x @ sd["13.weight"].T, params["bn_14"], stats["bn_14"]), 0)
  logits = x @ sd["17.weight"].T + sd["17.bias"]
  logits = logits - logits.max(-1, keepdims=True)
  return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


@pytest.mark.parametrize("model", [SECNN(), SACNN()])
def test_matches_seed_sequential_in_eval_mode(model):
  images = _images()
  variables = _init(model, images)
  # Random BN affine/statistics and SA gammas, so every mapping matters.
  bn = lambda tree, positive: {
      k: (_random_like(v, seed=len(k), positive=positive)
          if k.startswith("bn_") else v) for k, v in tree.items()}
  params = bn(variables["params"], positive=False)
  stats = {k: {"mean": _random_like(v["mean"], seed=1) * 100.0,
               "var": _random_like(v["var"], seed=2, positive=True) * 1e4}
           for k, v in variables["batch_stats"].items()}
  for k in params:
    if k.startswith("sa_"):
      params[k] = dict(params[k], gamma=jnp.array([0.7]))
  variables = {"params": params, "batch_stats": stats}
  ref = _seed_forward(variables, np.asarray(images, np.float64).transpose(0, 3, 1, 2),
                      model.block)
  np.testing.assert_allclose(_apply(model, variables, images), ref,
                             rtol=1e-4, atol=1e-4)


def test_bfloat16_compute_stays_close_to_float32():
  model = SECNN()
  images = _images()
  variables = _init(model, images)
  ref = _apply(model, variables, images)
  low = _apply(SECNN(dtype=jnp.bfloat16), variables, images)
  assert low.dtype == jnp.float32
  assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  np.testing.assert_allclose(low, ref, atol=0.15)
