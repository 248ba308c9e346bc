"""Tests for jaxattn.models.attention_blocks.

The numeric tests rebuild each block in NumPy, float64, in the PyTorch layout
of the code it comes from (seed 003's SEBlock and SelfAttentionBlock, GSoP-Net's
``chan_att``): channels-first tensors and torch-shaped weights, converted from
the Flax params with the rules in the module docstring. Equality therefore
checks the math and that mapping.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattn.models.attention_blocks import (FeatureMapSelfAttention, GSoP,
                                             SelfAttention2D, SqueezeExcitation,
                                             covariance)
from jaxattn.models.transformer import MultiHeadSelfAttention


@functools.partial(jax.jit, static_argnums=0)
def _init(module, x):
  return module.init(jax.random.key(0), x)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _apply(module, variables, x, train=False):
  kwargs = {"train": train} if isinstance(module, GSoP) else {}
  mutable = ["batch_stats"] if train else False
  # Full float32 matmuls, so the comparisons hold on any backend.
  with jax.default_matmul_precision("float32"):
    return module.apply(variables, x, mutable=mutable, **kwargs)


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


# NumPy randomness: eager jax.random would compile a kernel per shape.
def _normal(seed, shape, scale=1.0, shift=0.0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(shift, scale, shape), jnp.float32)


def _random_like(tree, seed, positive=False):
  """Replaces every leaf by random values (so the zeros/ones of init matter)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape) if positive else
                            rng.normal(0.0, 0.5, a.shape), jnp.float32), tree)


def _nchw(x):
  return np.asarray(x, np.float64).transpose(0, 3, 1, 2)


def _nhwc(x):
  return x.transpose(0, 2, 3, 1)


# --------------------------------------------------------------------------
# NumPy references, PyTorch layout.
# --------------------------------------------------------------------------


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _softmax(x, axis):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def _conv1x1(x, weight, bias=None, stride=1):
  """Conv2d(kernel 1, stride) on NCHW x with an OIHW weight."""
  x = x[:, :, ::stride, ::stride]
  out = np.einsum("bchw,oc->bohw", x, weight[:, :, 0, 0])
  return out if bias is None else out + bias[None, :, None, None]


def _torch_conv(p):
  """Flax nn.Conv params -> (weight OIHW, bias)."""
  return p["kernel"].transpose(3, 2, 0, 1), p.get("bias")


def _bn_eval(x, params, stats, eps=1e-5):
  """BatchNorm (eval) over dim 1 of an (B, C, ...) array."""
  shape = (1, -1) + (1,) * (x.ndim - 2)
  r = lambda a: a.reshape(shape)
  return ((x - r(stats["mean"])) / np.sqrt(r(stats["var"]) + eps) *
          r(params["scale"]) + r(params["bias"]))


def seed_se_block(x, p):
  """Seed 003's SEBlock.forward on NCHW x; p: the Flax params of the block."""
  w0, w2 = p["fc_0"]["kernel"].T, p["fc_2"]["kernel"].T  # fc.0 / fc.2.weight
  y = x.mean(axis=(2, 3))
  y = _sigmoid(np.maximum(y @ w0.T, 0.0) @ w2.T)
  return x * y[:, :, None, None]


def seed_sa_block(x, p):
  """Seed 003's SelfAttentionBlock.forward on NCHW x, with its bmm's."""
  b, c, h, w = x.shape
  q_w, q_b = _torch_conv(p["query_conv"])
  k_w, k_b = _torch_conv(p["key_conv"])
  v_w, v_b = _torch_conv(p["value_conv"])
  query = _conv1x1(x, q_w, q_b).reshape(b, -1, h * w).transpose(0, 2, 1)  # B,N,C'
  key = _conv1x1(x, k_w, k_b).reshape(b, -1, h * w)  # B,C',N
  energy = query @ key  # torch.bmm
  attention = _softmax(energy, axis=-1)
  value = _conv1x1(x, v_w, v_b).reshape(b, -1, h * w)  # B,C,N
  out = (value @ attention.transpose(0, 2, 1)).reshape(b, c, h, w)
  return p["gamma"][0] * out + x


def _np_covariance(x):
  """GSoP-Net's CovpoolLayer on NCHW x: X Î Xᵀ, literally."""
  b, d, h, w = x.shape
  m = h * w
  x = x.reshape(b, d, m)
  i_hat = (-1.0 / m / m) * np.ones((m, m)) + (1.0 / m) * np.eye(m)
  return x @ i_hat @ x.transpose(0, 2, 1)


def gsop_chan_att(x, p, s, stride):
  """GSoP-Net's Bottleneck.chan_att (eval mode) on NCHW x, times x."""
  w, bias = _torch_conv(p["conv_for_DR"])
  out = _conv1x1(np.maximum(x, 0.0), w, bias, stride=stride)
  out = np.maximum(_bn_eval(out, p["bn_for_DR"], s["bn_for_DR"]), 0.0)
  out = _np_covariance(out)[..., None]  # (B, d, d, 1)
  out = _bn_eval(out, p["row_bn"], s["row_bn"])
  w, bias = _torch_conv(p["row_conv_group"])  # [4d, 1, d, 1], groups = d
  d = out.shape[1]
  per_group = w.shape[0] // d
  z = np.empty((x.shape[0], w.shape[0]))
  for o in range(w.shape[0]):  # PyTorch groups: output o reads channel o // 4.
    g = o // per_group
    z[:, o] = np.einsum("bj,j->b", out[:, g, :, 0], w[o, 0, :, 0]) + bias[o]
  w, bias = _torch_conv(p["fc_adapt_channels"])
  att = _sigmoid(z @ w[:, :, 0, 0].T + bias)
  return x * att[:, :, None, None]


# --------------------------------------------------------------------------
# Squeeze-and-excitation.
# --------------------------------------------------------------------------


def test_se_zero_width_gate_is_exactly_one_half():
  x = _normal(1, (2, 5, 4, 12), scale=100.0)
  se = SqueezeExcitation()  # 12 // 16 = 0 hidden units, as in the seed.
  variables = _init(se, x)
  assert variables["params"]["fc_0"]["kernel"].shape == (12, 0)
  assert variables["params"]["fc_2"]["kernel"].shape == (0, 12)
  np.testing.assert_array_equal(_apply(se, variables, x), 0.5 * x)


def test_se_matches_seed_reference():
  x = _normal(2, (2, 3, 5, 32))
  se = SqueezeExcitation()
  variables = _init(se, x)
  assert variables["params"]["fc_0"]["kernel"].shape == (32, 2)
  ref = seed_se_block(_nchw(x), _np(variables["params"]))
  np.testing.assert_allclose(_apply(se, variables, x), _nhwc(ref),
                             rtol=1e-5, atol=1e-6)


def test_se_hidden_override():
  x = jnp.ones((1, 2, 2, 12))
  params = _init(SqueezeExcitation(hidden=3), x)["params"]
  assert params["fc_0"]["kernel"].shape == (12, 3)


# --------------------------------------------------------------------------
# SAGAN self-attention.
# --------------------------------------------------------------------------


def test_sagan_block_is_identity_at_init():
  x = _normal(3, (2, 3, 5, 16))
  block = SelfAttention2D()
  variables = _init(block, x)
  np.testing.assert_array_equal(variables["params"]["gamma"], [0.0])
  np.testing.assert_array_equal(_apply(block, variables, x), x)


def test_sagan_block_matches_seed_bmm_reference():
  # Non-square map: a row/column mix-up in the position order shows up.
  x = _normal(4, (2, 3, 5, 16))
  block = SelfAttention2D()
  variables = _random_like(_init(block, x), seed=5)
  variables["params"]["gamma"] = jnp.ones((1,))
  assert variables["params"]["query_conv"]["kernel"].shape == (1, 1, 16, 2)
  ref = seed_sa_block(_nchw(x), _np(variables["params"]))
  np.testing.assert_allclose(_apply(block, variables, x), _nhwc(ref),
                             rtol=1e-5, atol=1e-5)


def test_sagan_attention_rows_sum_to_one():
  x = _normal(6, (1, 2, 3, 8))
  block = SelfAttention2D()
  variables = _random_like(_init(block, x), seed=7)
  _, state = jax.jit(functools.partial(block.apply, mutable=["intermediates"]))(
      variables, x)
  (attention,) = state["intermediates"]["attention"]
  assert attention.shape == (1, 6, 6)
  np.testing.assert_allclose(attention.sum(-1), 1.0, atol=1e-6)


# --------------------------------------------------------------------------
# GSoP.
# --------------------------------------------------------------------------


def test_covariance_matches_i_hat_formula():
  x = _normal(8, (2, 3, 5, 6), shift=3.0)
  ref = _np_covariance(_nchw(x))
  got = covariance(x)
  assert got.shape == (2, 6, 6) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  # It is the biased (1/M) covariance of the positions.
  np.testing.assert_allclose(
      ref[0], np.cov(_nchw(x)[0].reshape(6, -1), bias=True), atol=1e-10)


@pytest.mark.parametrize("stride, size", [(1, (4, 6)), (2, (5, 7))])
def test_gsop_matches_official_chan_att_in_eval_mode(stride, size):
  x = _normal(9, (3, *size, 16))
  gsop = GSoP(reduced_dim=8, dim_reduction_stride=stride)
  variables = _init(gsop, x)
  params = _random_like(variables["params"], seed=10)
  stats = _random_like(variables["batch_stats"], seed=11, positive=True)
  variables = {"params": params, "batch_stats": stats}
  assert params["row_conv_group"]["kernel"].shape == (8, 1, 1, 32)
  ref = gsop_chan_att(_nchw(x), _np(params), _np(stats), stride)
  np.testing.assert_allclose(_apply(gsop, variables, x), _nhwc(ref),
                             rtol=1e-4, atol=1e-5)


def test_gsop_train_mode_updates_batch_stats():
  x = _normal(12, (4, 4, 4, 16))
  gsop = GSoP(reduced_dim=8, dim_reduction_stride=2)
  variables = _init(gsop, x)
  out, state = _apply(gsop, variables, x, True)
  assert out.shape == x.shape
  for name in ("bn_for_DR", "row_bn"):
    assert not np.allclose(state["batch_stats"][name]["mean"],
                           variables["batch_stats"][name]["mean"])


# --------------------------------------------------------------------------
# Multi-head self-attention.
# --------------------------------------------------------------------------


def _np_mhsa(x, p, num_heads):
  b, n, d = x.shape
  hd = d // num_heads
  proj = lambda name, t: t @ p[name]["kernel"] + p[name]["bias"]
  q, k, v = (proj(name, x).reshape(b, n, num_heads, hd).transpose(0, 2, 1, 3)
             for name in ("query", "key", "value"))
  a = _softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd), axis=-1)
  out = (a @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
  return proj("out", out)


def test_mhsa_matches_reference():
  x = _normal(13, (2, 5, 12))
  mhsa = MultiHeadSelfAttention(num_heads=3)
  variables = _init(mhsa, x)
  ref = _np_mhsa(np.asarray(x, np.float64), _np(variables["params"]), 3)
  np.testing.assert_allclose(_apply(mhsa, variables, x), ref,
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("residual", [True, False])
def test_feature_map_attention_flattens_positions(residual):
  x = _normal(14, (2, 2, 3, 8))
  block = FeatureMapSelfAttention(num_heads=2, residual=residual)
  variables = _init(block, x)
  xn = np.asarray(x, np.float64)
  ref = _np_mhsa(xn.reshape(2, 6, 8), _np(variables["params"]["attention"]),
                 2).reshape(xn.shape)
  np.testing.assert_allclose(_apply(block, variables, x),
                             ref + xn if residual else ref, rtol=1e-5, atol=1e-5)


def test_mhsa_rejects_indivisible_heads():
  with pytest.raises(ValueError, match="not divisible by num_heads=5"):
    MultiHeadSelfAttention(num_heads=5).init(jax.random.key(0),
                                             jnp.zeros((1, 3, 12)))


# --------------------------------------------------------------------------
# dtypes.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("module", [
    SqueezeExcitation(dtype=jnp.bfloat16), SelfAttention2D(dtype=jnp.bfloat16),
    GSoP(reduced_dim=8, dtype=jnp.bfloat16),
    FeatureMapSelfAttention(num_heads=2, dtype=jnp.bfloat16)])
def test_bfloat16_compute_keeps_float32_params(module):
  x = _normal(15, (2, 4, 4, 16))
  variables = jax.eval_shape(module.init, jax.random.key(0), x)
  assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  out = _apply(module, _init(module, x), x)
  assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
