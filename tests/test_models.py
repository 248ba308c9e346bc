"""Tests for jaxattn.models.conv_vit (seed 004) and jaxattn.models.vit (seed 002).

The numeric tests rebuild each seed's forward pass in NumPy, float64, in the
seed's own PyTorch layout (channels-first, torch-shaped weights, fused q;k;v
in_proj), from Flax params converted with the mapping documented in each
model's module docstring. Equality therefore checks the math and that mapping.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattn.models import create_model
from jaxattn.models.conv_vit import ConvViT, Embedding
from jaxattn.models.transformer import (TORCH_MULTIHEAD, MultiHeadSelfAttention,
                                        Seed002EncoderBlock)
from jaxattn.models.vit import ViT

_erf = np.vectorize(math.erf)


def _param_count(model, image_shape):
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(image_shape)))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))


# Jitted: one compile per config is much faster than op-by-op dispatch.
@functools.partial(jax.jit, static_argnums=0)
def _init(model, images):
  return model.init(jax.random.key(0), images)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _apply(model, variables, images, mutable=False):
  return model.apply(variables, images, mutable=mutable)


def _init_and_apply(model, images, mutable=False):
  variables = _init(model, images)
  # Full float32 matmuls, so the 1e-5 comparisons hold on any backend.
  with jax.default_matmul_precision("float32"):
    return variables, _apply(model, variables, images, mutable)


def _to_np(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


# --------------------------------------------------------------------------
# NumPy references in the seeds' PyTorch layout.
# --------------------------------------------------------------------------


def _gelu(x):
  return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _softmax(x, axis):
  x = x - x.max(axis=axis, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=axis, keepdims=True)


def _layer_norm(x, weight, bias, eps=1e-5):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean)**2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * weight + bias


def _conv_patches(x, weight, bias):
  """Conv2d(kernel=stride=p, no padding) on NCHW x with an OIHW weight."""
  b, c, h, w = x.shape
  p = weight.shape[-1]
  patches = x.reshape(b, c, h // p, p, w // p, p)
  out = np.einsum("bcypxq,ocpq->boyx", patches, weight)
  return out + bias[None, :, None, None]


def _conv1x1(x, weight, bias):
  return (np.einsum("bchw,oc->bohw", x, weight[:, :, 0, 0]) +
          bias[None, :, None, None])


def _conv_vit_state_dict(params):
  """Flax ConvViT params -> the seed's state_dict (torch shapes)."""
  p = _to_np(params)
  sd = {
      "embedding.patch.weight":
          p["embedding"]["patch"]["kernel"].transpose(3, 2, 0, 1),
      "embedding.patch.bias": p["embedding"]["patch"]["bias"],
      "embedding.pos_embedding":
          p["embedding"]["pos_embedding"].transpose(2, 0, 1)[None],
      "norm.weight": p["norm"]["scale"],
      "norm.bias": p["norm"]["bias"],
      "mlp_head.3.weight": p["head"]["kernel"].T,
      "mlp_head.3.bias": p["head"]["bias"],
  }
  depth = sum(k.startswith("layers_") for k in p)
  for i in range(depth):
    layer = p[f"layers_{i}"]
    pre = f"transformer.layers.{i}"
    sd[f"{pre}.0.lnorm.weight"] = layer["attn_norm"]["scale"]
    sd[f"{pre}.0.lnorm.bias"] = layer["attn_norm"]["bias"]
    sd[f"{pre}.1.lnorm.weight"] = layer["ff_norm"]["scale"]
    sd[f"{pre}.1.lnorm.bias"] = layer["ff_norm"]["bias"]
    convs = [(f"0.fn.{n}", layer["attn"][n])
             for n in ("q", "k", "v", "unify_heads")]
    convs += [("1.fn.net.0", layer["ff"]["fc1"]), ("1.fn.net.2", layer["ff"]["fc2"])]
    for name, dense in convs:
      sd[f"{pre}.{name}.weight"] = dense["kernel"].T[:, :, None, None]
      sd[f"{pre}.{name}.bias"] = dense["bias"]
  return sd, depth


def _seed004_forward(sd, depth, x, head_channels):
  """The seed's ViT.forward on NCHW x; returns logits and each layer's attention."""

  def prenorm_ln(x, pre):
    # The seed's PreNormChannels: transpose(1,-1), LayerNorm(C), transpose back.
    x = x.transpose(0, 3, 2, 1)
    x = _layer_norm(x, sd[f"{pre}.weight"], sd[f"{pre}.bias"])
    return x.transpose(0, 3, 2, 1)

  def mh_self_attention(x, pre):
    b, c, h, w = x.shape
    heads = c // head_channels
    conv = lambda n: _conv1x1(x, sd[f"{pre}.{n}.weight"], sd[f"{pre}.{n}.bias"])
    keys = conv("k").reshape(b, heads, head_channels, -1)
    queries = conv("q").reshape(b, heads, head_channels, -1)
    values = conv("v").reshape(b, heads, head_channels, -1)
    attend = queries @ keys.transpose(0, 1, 3, 2) * head_channels**-0.5
    attention = _softmax(attend, axis=-2)
    out = (attention @ values).reshape(b, -1, h, w)
    out = _conv1x1(out, sd[f"{pre}.unify_heads.weight"],
                   sd[f"{pre}.unify_heads.bias"])
    return out, attention

  x = _conv_patches(x, sd["embedding.patch.weight"], sd["embedding.patch.bias"])
  x = x + sd["embedding.pos_embedding"]
  attentions = []
  for i in range(depth):
    pre = f"transformer.layers.{i}"
    out, attention = mh_self_attention(prenorm_ln(x, f"{pre}.0.lnorm"), f"{pre}.0.fn")
    attentions.append(attention)
    x = out + x
    y = prenorm_ln(x, f"{pre}.1.lnorm")
    y = _conv1x1(y, sd[f"{pre}.1.fn.net.0.weight"], sd[f"{pre}.1.fn.net.0.bias"])
    y = _conv1x1(_gelu(y), sd[f"{pre}.1.fn.net.2.weight"],
                 sd[f"{pre}.1.fn.net.2.bias"])
    x = y + x
  x = prenorm_ln(x, "norm")
  x = _gelu(x).mean(axis=(2, 3))
  logits = x @ sd["mlp_head.3.weight"].T + sd["mlp_head.3.bias"]
  return logits, attentions


def _vit_block_state_dict(block):
  """Flax Seed002EncoderBlock params -> the seed's TransformerEncoder block (torch)."""
  attn = block["self_attention"]
  return {
      "layer_norm.weight": block["layer_norm"]["scale"],
      "layer_norm.bias": block["layer_norm"]["bias"],
      "self_attention.in_proj_weight": np.concatenate(
          [attn[n]["kernel"].T for n in ("query", "key", "value")], axis=0),
      "self_attention.in_proj_bias": np.concatenate(
          [attn[n]["bias"] for n in ("query", "key", "value")], axis=0),
      "self_attention.out_proj.weight": attn["out"]["kernel"].T,
      "self_attention.out_proj.bias": attn["out"]["bias"],
      "mlp_block.0.weight": block["mlp_block"]["fc1"]["kernel"].T,
      "mlp_block.0.bias": block["mlp_block"]["fc1"]["bias"],
      "mlp_block.2.weight": block["mlp_block"]["fc2"]["kernel"].T,
      "mlp_block.2.bias": block["mlp_block"]["fc2"]["bias"],
  }


def _seed002_block(sd, x, num_heads):
  """The seed's block on (B, N, D): LN replaces x, then two residuals."""
  b, n, d = x.shape
  hd = d // num_heads
  x = _layer_norm(x, sd["layer_norm.weight"], sd["layer_norm.bias"])
  # nn.MultiheadAttention with batch_first=True, fused in_proj.
  qkv = x @ sd["self_attention.in_proj_weight"].T + sd["self_attention.in_proj_bias"]
  q, k, v = (t.reshape(b, n, num_heads, hd).transpose(0, 2, 1, 3)
             for t in np.split(qkv, 3, axis=-1))
  probs = _softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd), axis=-1)
  attn = (probs @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
  attn = attn @ sd["self_attention.out_proj.weight"].T + sd["self_attention.out_proj.bias"]
  x = attn + x
  h = _gelu(x @ sd["mlp_block.0.weight"].T + sd["mlp_block.0.bias"])
  return h @ sd["mlp_block.2.weight"].T + sd["mlp_block.2.bias"] + x


def _seed002_forward(params, x, num_heads):
  """The seed's AttentionModel.forward on NCHW x, from torch-layout tensors."""
  p = _to_np(params)
  emb = p["patch_embedding"]
  weight = emb["patch_layer"]["kernel"].transpose(3, 2, 0, 1)
  class_token = emb["class_token"][0].T  # torch (D, 1)
  pos = emb["positional_embedding"][0].T  # torch (D, N+1)
  x = _conv_patches(x, weight, emb["patch_layer"]["bias"])
  x = x.reshape(x.shape[0], x.shape[1], -1)  # flatten(-2): (B, D, N)
  cls = np.broadcast_to(class_token[None], (x.shape[0],) + class_token.shape)
  x = (np.concatenate([cls, x], axis=-1) + pos).transpose(0, 2, 1)
  depth = sum(k.startswith("transformer_encoder_") for k in p)
  for i in range(depth):
    x = _seed002_block(_vit_block_state_dict(p[f"transformer_encoder_{i}"]), x,
                       num_heads)
  return x[:, 0] @ p["output_layer"]["kernel"] + p["output_layer"]["bias"]


# Tiny, non-square configs: a row/column mix-up in the token order shows up.
_TINY_CONV_VIT = dict(num_classes=5, patch_size=2, hidden_dim=16, depth=2,
                      head_channels=4, mlp_ratio=2)
_TINY_VIT = dict(num_classes=7, patch_size=4, hidden_dim=16, depth=2,
                 num_heads=2, mlp_dim=24)
_TINY_IMAGES = (2, 8, 12, 3)


def _images(shape=_TINY_IMAGES, seed=1):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


# --------------------------------------------------------------------------
# Parameter counts at the seeds' settings (specs/seeds.md, verified there).
# --------------------------------------------------------------------------


def test_conv_vit_param_count_matches_seed():
  assert _param_count(ConvViT(), (1, 32, 32, 3)) == 59_818


@pytest.mark.parametrize("image_shape, num_classes, expected", [
    ((1, 28, 28, 1), 10, 6_339_082),  # MNIST
    ((1, 32, 32, 3), 10, 6_351_114),  # CIFAR-10
    ((1, 32, 32, 3), 100, 6_374_244),  # CIFAR-100
])
def test_vit_param_count_matches_seed(image_shape, num_classes, expected):
  assert _param_count(ViT(num_classes=num_classes), image_shape) == expected


def test_registry_builds_both_models():
  assert isinstance(create_model("conv_vit", depth=1), ConvViT)
  assert isinstance(create_model("vit", depth=1), ViT)


# --------------------------------------------------------------------------
# Shapes and dtypes.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("model_cls, kwargs", [(ConvViT, _TINY_CONV_VIT),
                                               (ViT, _TINY_VIT)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_logits_are_float32_and_params_float32(model_cls, kwargs, dtype):
  images = _images()
  model = model_cls(**kwargs, dtype=dtype)
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)
  assert {x.dtype for x in jax.tree.leaves(shapes["params"])} == {
      jnp.dtype(jnp.float32)}
  # Parameters do not depend on dtype: reuse the cached float32 init.
  logits = _apply(model, _init(model_cls(**kwargs), images), images)
  assert logits.shape == (images.shape[0], kwargs["num_classes"])
  assert logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize("model_cls, kwargs", [(ConvViT, _TINY_CONV_VIT),
                                               (ViT, _TINY_VIT)])
def test_bfloat16_compute_stays_close_to_float32(model_cls, kwargs):
  images = _images()
  variables, ref = _init_and_apply(model_cls(**kwargs), images)
  low = _apply(model_cls(**kwargs, dtype=jnp.bfloat16), variables, images)
  np.testing.assert_allclose(low, ref, atol=0.1)


# --------------------------------------------------------------------------
# Numerics against the seeds' PyTorch math.
# --------------------------------------------------------------------------


def test_conv_vit_matches_seed_channels_first_reference():
  images = _images()
  model = ConvViT(**_TINY_CONV_VIT)
  variables, (logits, state) = _init_and_apply(
      model, images, mutable=("intermediates",))
  sd, depth = _conv_vit_state_dict(variables["params"])
  assert depth == _TINY_CONV_VIT["depth"]
  ref_logits, ref_attentions = _seed004_forward(
      sd, depth, np.asarray(images, np.float64).transpose(0, 3, 1, 2),
      _TINY_CONV_VIT["head_channels"])
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
  for i, ref_attention in enumerate(ref_attentions):
    (attention,) = state["intermediates"][f"layers_{i}"]["attn"]["attention"]
    np.testing.assert_allclose(attention, ref_attention, rtol=1e-5, atol=1e-6)


def test_conv_vit_attention_columns_sum_to_one():
  _, (_, state) = _init_and_apply(
      ConvViT(**_TINY_CONV_VIT), _images(), mutable=("intermediates",))
  (attention,) = state["intermediates"]["layers_0"]["attn"]["attention"]
  heads = _TINY_CONV_VIT["hidden_dim"] // _TINY_CONV_VIT["head_channels"]
  hc = _TINY_CONV_VIT["head_channels"]
  assert attention.shape == (_TINY_IMAGES[0], heads, hc, hc)
  # The seed's softmax(dim=-2): over the query channel i, so columns sum to 1
  # and rows (the usual convention) do not.
  np.testing.assert_allclose(attention.sum(axis=-2), 1.0, atol=1e-6)
  assert not np.allclose(attention.sum(axis=-1), 1.0, atol=1e-3)


def test_vit_block_matches_seed_reference():
  x = jax.random.normal(jax.random.key(3), (2, 5, 16))
  block = Seed002EncoderBlock(num_heads=4, mlp_dim=24)
  variables, out = _init_and_apply(block, x)
  sd = _vit_block_state_dict(_to_np(variables["params"]))
  ref = _seed002_block(sd, np.asarray(x, np.float64), num_heads=4)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_vit_matches_seed_reference():
  images = _images()
  variables, logits = _init_and_apply(ViT(**_TINY_VIT), images)
  ref = _seed002_forward(variables["params"],
                         np.asarray(images, np.float64).transpose(0, 3, 1, 2),
                         _TINY_VIT["num_heads"])
  np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------
# Initialisation: the seeds' PyTorch defaults.
# --------------------------------------------------------------------------


def test_vit_init_follows_torch_multihead_attention():
  d = 64
  attn = _init(MultiHeadSelfAttention(num_heads=4, **TORCH_MULTIHEAD),
               jnp.zeros((1, 3, d)))
  attn = attn["params"]
  # xavier_uniform_ over the fused [3D, D] in_proj_weight.
  bound = math.sqrt(6 / (d + 3 * d))
  for name in ("query", "key", "value"):
    kernel = np.asarray(attn[name]["kernel"])
    assert np.abs(kernel).max() <= bound
    assert np.abs(kernel).max() > 0.9 * bound
  for name in ("query", "key", "value", "out"):
    np.testing.assert_array_equal(attn[name]["bias"], 0.0)


def test_positional_embeddings_are_standard_normal():
  # The seed's Embedding(32 channels, patch 2) on 32x32x3 CIFAR images.
  embedding = _init(Embedding(32, 2), jnp.zeros((1, 32, 32, 3)))
  pos = np.asarray(embedding["params"]["pos_embedding"])
  assert pos.shape == (16, 16, 32)
  assert abs(pos.mean()) < 0.05 and abs(pos.std() - 1.0) < 0.05


# --------------------------------------------------------------------------
# Input validation.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("model", [ConvViT(**_TINY_CONV_VIT), ViT(**_TINY_VIT)])
def test_indivisible_image_size_is_rejected(model):
  images = jnp.zeros((1, 10, 9, 3))
  with pytest.raises(ValueError, match=f"patch_size={model.patch_size}") as e:
    model.init(jax.random.key(0), images)
  assert "10x9" in str(e.value)


@pytest.mark.parametrize("model", [ConvViT(**_TINY_CONV_VIT), ViT(**_TINY_VIT)])
def test_non_nhwc_input_is_rejected(model):
  with pytest.raises(ValueError, match="batch, height, width, channels"):
    model.init(jax.random.key(0), jnp.zeros((8, 12, 3)))
