"""Tests for jaxattn.models.hybrid (seed 000).

The numeric tests rebuild the authors' Keras graph in NumPy, float64, in
Keras' own weight layout (Conv1D kernels (k, in, out), the DepthwiseConv1D
kernel (k, channels, multiplier), TF 'same' padding), and the vit_jax ViT
from the raw ``.npz`` tensors. Where Keras 3 imports, the fusion head is also
compared with the real Keras layers carrying the same weights.
"""

import functools
import hashlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn
from flax import traverse_util

from jaxattn.models import create_model
from jaxattn.models.hybrid import (BottleneckRefinement, Hybrid,
                                   HybridFusionHead, ViTBackbone,
                                   channel_shuffle, load_vit_npz)

_TINY_BACKBONE = dict(patch_size=8, hidden_dim=16, depth=2, num_heads=2,
                      mlp_dim=32)
_TINY_IMAGES = (2, 32, 32, 3)


def _count(tree):
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _abstract_variables(model, shape):
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))


@functools.partial(jax.jit, static_argnums=0)
def _init(model, x):
  return model.init(jax.random.key(0), x)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _apply(model, variables, x, train=False):
  if train:
    return model.apply(variables, x, train=True, mutable=["batch_stats"],
                       rngs={"dropout": jax.random.key(1)})
  return model.apply(variables, x)


@functools.cache
def _head_variables():
  """HybridFusionHead(num_classes=10) with random weights, shared by tests
  (initialising 2.6M parameters is slow with optimisations off)."""
  return _randomize(_init(HybridFusionHead(), _logits()))


@functools.cache
def _hybrid_variables():
  return jax.device_get(_init(Hybrid(**_TINY_BACKBONE), _images()))


def _images():
  return jax.random.uniform(jax.random.key(0), _TINY_IMAGES, minval=-1,
                            maxval=1)


def _to_np(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _logits(shape=(3, 1000), seed=0):
  # ImageNet-like logits: a few units wide.
  return jax.random.normal(jax.random.key(seed), shape) * 3.0


def _randomize(variables, seed=0):
  """Random weights at a healthy scale; BN statistics away from (0, 1)."""
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(jax.device_get(variables))
  out = {}
  for path, x in flat.items():
    shape = x.shape
    if path[-1] == "kernel":
      fan_in = math.prod(shape[:-1])
      if path[-2] == "conv2D_3_module_1":
        fan_in = 2  # Only ~2 taps touch data on a length-2 sequence.
      v = rng.normal(size=shape) / math.sqrt(fan_in)
    elif path[-1] == "scale":
      v = 1.0 + 0.2 * rng.normal(size=shape)
    elif path[-1] == "var":
      v = rng.uniform(0.5, 1.5, size=shape)
    else:  # bias, mean
      v = 0.2 * rng.normal(size=shape)
    out[path] = np.asarray(v, np.float32)
  return traverse_util.unflatten_dict(out)


# --------------------------------------------------------------------------
# Parameter counts (specs/seeds.md, "Seed 000", section 5).
# --------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes, trainable, keras_total", [
    (10, 2_580_582, 2_582_466),
    (100, 2_586_522, 2_588_406),
    (196, 2_592_858, 2_594_742),
])
def test_fusion_head_param_counts_match_keras(num_classes, trainable,
                                              keras_total):
  variables = _abstract_variables(HybridFusionHead(num_classes), (1, 1000))
  assert _count(variables["params"]) == trainable
  assert _count(variables["batch_stats"]) == 1_884
  assert trainable + 1_884 == keras_total


def test_vit_b8_param_count():
  variables = _abstract_variables(ViTBackbone(), (1, 224, 224, 3))
  assert set(variables) == {"params"}
  assert _count(variables["params"]) == 86_576_872


def test_vit_b8_parameter_paths_are_the_npz_keys():
  params = _abstract_variables(ViTBackbone(depth=1), (1, 224, 224, 3))["params"]
  flat = {"/".join(k): v.shape for k, v in
          traverse_util.flatten_dict(params).items()}
  block = "Transformer/encoderblock_0"
  attn = f"{block}/MultiHeadDotProductAttention_1"
  expected = {
      "embedding/kernel": (8, 8, 3, 768), "embedding/bias": (768,),
      "cls": (1, 1, 768),
      "Transformer/posembed_input/pos_embedding": (1, 785, 768),
      f"{block}/LayerNorm_0/scale": (768,), f"{block}/LayerNorm_0/bias": (768,),
      f"{attn}/query/kernel": (768, 12, 64), f"{attn}/query/bias": (12, 64),
      f"{attn}/key/kernel": (768, 12, 64), f"{attn}/key/bias": (12, 64),
      f"{attn}/value/kernel": (768, 12, 64), f"{attn}/value/bias": (12, 64),
      f"{attn}/out/kernel": (12, 64, 768), f"{attn}/out/bias": (768,),
      f"{block}/LayerNorm_2/scale": (768,), f"{block}/LayerNorm_2/bias": (768,),
      f"{block}/MlpBlock_3/Dense_0/kernel": (768, 3072),
      f"{block}/MlpBlock_3/Dense_0/bias": (3072,),
      f"{block}/MlpBlock_3/Dense_1/kernel": (3072, 768),
      f"{block}/MlpBlock_3/Dense_1/bias": (768,),
      "Transformer/encoder_norm/scale": (768,),
      "Transformer/encoder_norm/bias": (768,),
      "head/kernel": (768, 1000), "head/bias": (1000,),
  }
  assert flat == expected


def test_hybrid_fusion_params_are_the_head_tree():
  hybrid = _abstract_variables(Hybrid(num_classes=7, **_TINY_BACKBONE),
                               _TINY_IMAGES)
  head = _abstract_variables(HybridFusionHead(num_classes=7), (1, 1000))
  shapes = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)
  assert shapes(hybrid["params"]["fusion"]) == shapes(head["params"])
  assert shapes(hybrid["batch_stats"]["fusion"]) == shapes(head["batch_stats"])
  assert set(hybrid["params"]) == {"backbone", "fusion"}


def test_registry_builds_both():
  assert isinstance(create_model("hybrid", num_classes=3), Hybrid)
  assert isinstance(create_model("hybrid_head", num_classes=3), HybridFusionHead)


def test_unknown_refinement_is_rejected():
  with pytest.raises(ValueError, match="none, bottleneck"):
    HybridFusionHead(refinement="shuffle").init(jax.random.key(0),
                                                jnp.zeros((1, 1000)))


# --------------------------------------------------------------------------
# Outputs.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("train", [False, True])
def test_outputs_are_probabilities_and_average_is_their_mean(train):
  model = HybridFusionHead()
  x = _logits()
  out = _apply(model, _head_variables(), x, train)
  if train:
    out, state = out
    assert set(state) == {"batch_stats"}
  assert set(out) == {"model0", "vit", "average"}
  for p in out.values():
    assert p.shape == (3, 10) and p.dtype == jnp.float32
    assert bool(jnp.all(p >= 0))
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(out["average"], (out["model0"] + out["vit"]) / 2,
                             atol=1e-7)


def test_bfloat16_compute_keeps_float32_params_and_probabilities():
  images = jax.ShapeDtypeStruct(_TINY_IMAGES, jnp.float32)
  model = Hybrid(dtype=jnp.bfloat16, **_TINY_BACKBONE)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  assert {x.dtype for x in jax.tree.leaves(variables)} == {
      jnp.dtype(jnp.float32)}
  out = jax.eval_shape(model.apply, variables, images)
  assert {x.dtype for x in out.values()} == {jnp.dtype(jnp.float32)}
  logits = jax.eval_shape(
      functools.partial(model.apply, method="backbone_logits"), variables,
      images)
  assert logits.dtype == jnp.float32


# --------------------------------------------------------------------------
# NumPy reference of the Keras graph, in Keras' weight layout.
# --------------------------------------------------------------------------


def _np_conv1d_same(x, kernel, bias):
  """Keras Conv1D(padding='same'), x (B, L, Cin), kernel (k, Cin, Cout)."""
  k, length = kernel.shape[0], x.shape[1]
  lo = (k - 1) // 2  # TF 'same': the odd extra pad goes on the right.
  xp = np.pad(x, ((0, 0), (lo, k - 1 - lo), (0, 0)))
  out = sum(xp[:, j:j + length] @ kernel[j] for j in range(k))
  return out + bias


def _np_depthwise_same(x, kernel, bias):
  """Keras DepthwiseConv1D(padding='same'), kernel (k, C, multiplier).

  Output channel c * multiplier + m, as TF's depthwise conv orders it.
  """
  k, length = kernel.shape[0], x.shape[1]
  lo = (k - 1) // 2
  xp = np.pad(x, ((0, 0), (lo, k - 1 - lo), (0, 0)))
  windows = np.lib.stride_tricks.sliding_window_view(xp, k, axis=1)  # (B,L,C,k)
  out = np.einsum("blck,kcm->blcm", windows[:, :length], kernel)
  return out.reshape(out.shape[0], length, -1) + bias


def _np_bn(x, params, stats, eps=1e-3):
  return ((x - stats["mean"]) / np.sqrt(stats["var"] + eps) * params["scale"] +
          params["bias"])


def _np_softmax(x, axis=-1):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def _np_elu(x):
  return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def _keras_depthwise_kernel(flax_kernel):
  """Flax (k, 1, C*M) grouped kernel -> Keras depthwise_kernel (k, C, M=2)."""
  return flax_kernel.reshape(flax_kernel.shape[0], -1, 2)


def _np_fusion_head(variables, logits, duplicate_avg_branch=True):
  """The notebook's model_1 + heads in inference mode, float64."""
  p, s = _to_np(variables["params"]), _to_np(variables["batch_stats"])
  logits = np.asarray(logits, np.float64)
  b = logits.shape[0]
  x = logits[:, :, None]  # (B, 1000, 1)

  def pools(reduce):
    outs = []
    for size in (2, 3, 5):  # Avg_pool_1..3 / max_pool_1..3, 'valid'.
      n = x.shape[1] // size
      outs.append(reduce(x[:, :n * size].reshape(b, n, size, 1), axis=2))
    return np.concatenate(outs, axis=1)  # (B, 1033, 1)

  ave_concate = pools(np.mean)
  max_concate = ave_concate if duplicate_avg_branch else pools(np.max)
  pool_con = np.concatenate([max_concate, ave_concate], axis=1).reshape(b, -1)
  a1 = np.stack(np.split(pool_con, 2, axis=1), axis=1)  # (B, 2, 1033)
  conv = lambda name, t: _np_conv1d_same(t, p[name]["kernel"], p[name]["bias"])
  bn = lambda name, t: _np_bn(t, p[name], s[name])
  input_dec = conv("decrease_dimension_1", a1)
  x1 = _np_softmax(bn("conv2D_1_module_1_bn", conv("conv2D_1_module_1", a1)))
  x2 = conv("conv2D_2_module_1", input_dec * x1)
  x2 = _np_elu(bn("conv2D_2_module_1_bn", x2))
  x2 = _np_depthwise_same(
      x2, _keras_depthwise_kernel(p["conv2D_3_module_1"]["kernel"]),
      p["conv2D_3_module_1"]["bias"])
  f1 = (input_dec * x2).reshape(b, -1)
  features = np.concatenate([f1, logits], axis=1)

  def head(names):
    h = features
    for name in names[:2]:
      h = _np_elu(h @ p[name]["kernel"] + p[name]["bias"])
      h = bn(f"{name}_bn", h)  # Dropout is the identity at inference.
    return _np_softmax(h @ p[names[2]]["kernel"] + p[names[2]]["bias"])

  model0 = head(("dense2w", "dense1w", "model0_logits"))
  vit = head(("dense_vit11", "dense_vit12", "vit_logits"))
  return {"model0": model0, "vit": vit, "average": (model0 + vit) / 2}


def test_depthwise_same_padding_matches_tf_reference():
  # conv2D_3_module_1 alone: kernel 250, multiplier 2, length 2. TF pads 124
  # left and 125 right, so output l reads taps 124 - l and 125 - l.
  # The layer as HybridFusionHead builds conv2D_3_module_1.
  layer = nn.Conv(500, (250,), padding="SAME", feature_group_count=250)
  x = jax.random.normal(jax.random.key(0), (2, 2, 250))
  variables = jax.jit(layer.init)(jax.random.key(1), x)
  kernel = np.asarray(variables["params"]["kernel"], np.float64)
  assert kernel.shape == (250, 1, 500)
  bias = np.random.default_rng(0).normal(size=500)
  variables = {"params": {"kernel": kernel.astype(np.float32),
                          "bias": bias.astype(np.float32)}}
  out = np.asarray(jax.jit(layer.apply)(variables, x), np.float64)
  keras_kernel = _keras_depthwise_kernel(kernel)
  xn = np.asarray(x, np.float64)
  ref = _np_depthwise_same(xn, keras_kernel, bias)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  # Explicitly: out[b, l, c*2+m] = x[b,0,c] K[124-l,c,m] + x[b,1,c] K[125-l,c,m].
  for l in range(2):
    manual = (xn[:, 0, :, None] * keras_kernel[124 - l] +
              xn[:, 1, :, None] * keras_kernel[125 - l]).reshape(2, 500) + bias
    np.testing.assert_allclose(out[:, l], manual, rtol=1e-5, atol=1e-5)


def test_keras_depthwise_init_std():
  # Keras he_normal with fan_in = 250 * 250 on the depthwise kernel.
  variables = _init(HybridFusionHead(), _logits())
  kernel = np.asarray(variables["params"]["conv2D_3_module_1"]["kernel"])
  np.testing.assert_allclose(kernel.std(), math.sqrt(2 / 62_500), rtol=0.02)
  np.testing.assert_array_equal(
      variables["params"]["conv2D_3_module_1"]["bias"], 0.0)
  dense = np.asarray(variables["params"]["dense2w"]["kernel"])
  assert np.abs(dense).max() <= math.sqrt(6 / (2000 + 64))  # glorot_uniform.


@pytest.mark.parametrize("duplicate_avg_branch", [True, False])
def test_fusion_head_matches_numpy_reference(duplicate_avg_branch):
  model = HybridFusionHead(duplicate_avg_branch=duplicate_avg_branch)
  x = _logits()
  variables = _head_variables()
  with jax.default_matmul_precision("float32"):
    out = _apply(model, variables, x)
  ref = _np_fusion_head(variables, x, duplicate_avg_branch)
  for name in ("model0", "vit", "average"):
    np.testing.assert_allclose(out[name], ref[name], rtol=1e-4, atol=1e-6)
  # The two heads differ only through their weights; the prediction is not
  # trivially uniform.
  assert np.abs(ref["model0"] - ref["vit"]).max() > 1e-2


def test_duplicate_avg_branch_changes_the_output():
  x = _logits()
  variables = _head_variables()
  a = _apply(HybridFusionHead(), variables, x)["average"]
  b = _apply(HybridFusionHead(duplicate_avg_branch=False), variables, x)["average"]
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-4


def _keras_fusion_model(keras, num_classes):
  """The notebook's model_1 and heads, built with Keras 3 layers."""
  layers = keras.layers
  logits = keras.Input((1000,))
  x = layers.Reshape((1000, 1))(logits)
  avg = [layers.AveragePooling1D(s, s, "valid", name=f"Avg_pool_{i}")(x)
         for i, s in enumerate((2, 3, 5), 1)]
  mx = [layers.AveragePooling1D(s, s, "valid", name=f"max_pool_{i}")(x)
        for i, s in enumerate((2, 3, 5), 1)]
  ave_concate = layers.Concatenate(axis=1)(avg)
  max_concate = layers.Concatenate(axis=1)(mx)
  pool_con = layers.Flatten()(layers.Concatenate(axis=1)([max_concate,
                                                          ave_concate]))
  a1 = layers.Reshape((2, 1033))(pool_con)  # tf.split + tf.stack(axis=1).
  input_dec = layers.Conv1D(500, 1, padding="same",
                            name="decrease_dimension_1")(a1)
  x1 = layers.Conv1D(500, 3, padding="same", name="conv2D_1_module_1")(a1)
  x1 = layers.BatchNormalization(name="bn_1")(x1)
  x1 = layers.Activation("softmax", name="softmax_module_1")(x1)
  x2 = layers.Conv1D(250, 1, padding="same", name="conv2D_2_module_1")(
      layers.Multiply()([input_dec, x1]))
  x2 = layers.ELU()(layers.BatchNormalization(name="bn_2")(x2))
  x2 = layers.DepthwiseConv1D(250, 1, padding="same", depth_multiplier=2,
                              name="conv2D_3_module_1")(x2)
  f1 = layers.Flatten()(layers.Multiply()([input_dec, x2]))
  features = layers.Concatenate()([f1, logits])
  outs = []
  for names in (("dense2w", "dense1w", "out_model0", "model0"),
                ("dense_vit11", "dense_vit12", "out_vit", "vit")):
    h = features
    for name in names[:2]:
      h = layers.Dense(64 if name in ("dense2w", "dense_vit11") else 32,
                       activation="elu", name=name)(h)
      h = layers.Dropout(0.2)(layers.BatchNormalization(name=f"{name}_bn")(h))
    h = layers.Dense(num_classes, name=names[2])(h)
    outs.append(layers.Activation("softmax", name=names[3])(h))
  average = layers.Average(name="average")([outs[1], outs[0]])
  return keras.Model(logits, [outs[1], outs[0], average])


def test_fusion_head_matches_keras_layers():
  keras = pytest.importorskip("keras")
  model = _keras_fusion_model(keras, 10)
  assert model.count_params() == 2_582_466
  flax_model = HybridFusionHead()
  x = _logits()
  variables = _head_variables()
  p, s = variables["params"], variables["batch_stats"]
  bn = lambda flax_name: [p[flax_name]["scale"], p[flax_name]["bias"],
                          s[flax_name]["mean"], s[flax_name]["var"]]
  for name in ("decrease_dimension_1", "conv2D_1_module_1", "conv2D_2_module_1",
               "dense2w", "dense1w", "dense_vit11", "dense_vit12"):
    model.get_layer(name).set_weights([p[name]["kernel"], p[name]["bias"]])
  for name in ("dense2w_bn", "dense1w_bn", "dense_vit11_bn", "dense_vit12_bn"):
    model.get_layer(name).set_weights(bn(name))
  model.get_layer("bn_1").set_weights(bn("conv2D_1_module_1_bn"))
  model.get_layer("bn_2").set_weights(bn("conv2D_2_module_1_bn"))
  model.get_layer("conv2D_3_module_1").set_weights(
      [_keras_depthwise_kernel(p["conv2D_3_module_1"]["kernel"]),
       p["conv2D_3_module_1"]["bias"]])
  model.get_layer("out_model0").set_weights(
      [p["model0_logits"]["kernel"], p["model0_logits"]["bias"]])
  model.get_layer("out_vit").set_weights(
      [p["vit_logits"]["kernel"], p["vit_logits"]["bias"]])
  vit, model0, average = (np.asarray(t) for t in
                          model(np.asarray(x), training=False))
  with jax.default_matmul_precision("float32"):
    out = _apply(flax_model, variables, x)
  np.testing.assert_allclose(out["model0"], model0, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(out["vit"], vit, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(out["average"], average, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------
# The backbone and the vit_jax .npz loader.
# --------------------------------------------------------------------------


def _ln(x, scale, bias, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean)**2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _np_vit(w, images, patch_size, depth):
  """vit_jax's VisionTransformer (token classifier) from raw npz tensors."""
  b, h, wd, c = images.shape
  p = patch_size
  patches = images.reshape(b, h // p, p, wd // p, p, c)
  x = np.einsum("byixjc,ijcd->byxd", patches, w["embedding/kernel"])
  x = x.reshape(b, -1, x.shape[-1]) + w["embedding/bias"]
  cls = np.broadcast_to(w["cls"], (b, 1, x.shape[-1]))
  x = np.concatenate([cls, x], axis=1) + w["Transformer/posembed_input/pos_embedding"]
  for i in range(depth):
    pre = f"Transformer/encoderblock_{i}"
    att = f"{pre}/MultiHeadDotProductAttention_1"
    y = _ln(x, w[f"{pre}/LayerNorm_0/scale"], w[f"{pre}/LayerNorm_0/bias"])
    q, k, v = (np.einsum("bnd,dhk->bnhk", y, w[f"{att}/{n}/kernel"]) +
               w[f"{att}/{n}/bias"] for n in ("query", "key", "value"))
    scores = np.einsum("bqhk,bshk->bhqs", q, k) / math.sqrt(q.shape[-1])
    o = np.einsum("bhqs,bshk->bqhk", _np_softmax(scores), v)
    x = x + np.einsum("bqhk,hkd->bqd", o, w[f"{att}/out/kernel"]) + w[f"{att}/out/bias"]
    y = _ln(x, w[f"{pre}/LayerNorm_2/scale"], w[f"{pre}/LayerNorm_2/bias"])
    mlp = f"{pre}/MlpBlock_3"
    y = _gelu_tanh(y @ w[f"{mlp}/Dense_0/kernel"] + w[f"{mlp}/Dense_0/bias"])
    x = x + y @ w[f"{mlp}/Dense_1/kernel"] + w[f"{mlp}/Dense_1/bias"]
  x = _ln(x, w["Transformer/encoder_norm/scale"], w["Transformer/encoder_norm/bias"])
  return x[:, 0] @ w["head/kernel"] + w["head/bias"]


def _tiny_npz_tensors(seed=0, image_size=32):
  """A checkpoint in the vit_jax layout for the tiny backbone: random values
  (non-zero cls and head) written with '/'-joined keys."""
  shapes = _abstract_variables(ViTBackbone(**_TINY_BACKBONE),
                               (1, image_size, image_size, 3))["params"]
  rng = np.random.default_rng(seed)
  return {"/".join(k): (0.3 * rng.normal(size=v.shape)).astype(np.float32)
          for k, v in traverse_util.flatten_dict(shapes).items()}


def _write_npz(tmp_path, tensors, name="ckpt.npz"):
  path = tmp_path / name
  np.savez(path, **tensors)
  return path


def _digest(path):
  return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(name="tiny_target")
def fixture_tiny_target():
  return _abstract_variables(ViTBackbone(**_TINY_BACKBONE), _TINY_IMAGES)["params"]


def test_npz_loads_into_the_backbone_and_matches_vit_jax_numerics(
    tmp_path, tiny_target):
  tensors = _tiny_npz_tensors()
  path = _write_npz(tmp_path, tensors)
  digest = _digest(path)
  params = load_vit_npz(path, tiny_target)
  assert _digest(path) == digest  # The file is only read.
  flat = traverse_util.flatten_dict(params)
  assert {"/".join(k) for k in flat} == set(tensors)
  for k, v in flat.items():
    np.testing.assert_array_equal(v, tensors["/".join(k)])
    assert v.dtype == np.float32
  images = jax.random.normal(jax.random.key(2), _TINY_IMAGES)
  with jax.default_matmul_precision("float32"):
    logits = jax.jit(ViTBackbone(**_TINY_BACKBONE).apply)({"params": params},
                                                          images)
  ref = _np_vit({k: v.astype(np.float64) for k, v in tensors.items()},
                np.asarray(images, np.float64), 8, _TINY_BACKBONE["depth"])
  assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)


def test_npz_missing_and_unexpected_keys_are_all_listed(tmp_path, tiny_target):
  tensors = _tiny_npz_tensors()
  del tensors["Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias"]
  del tensors["cls"]
  tensors["pre_logits/kernel"] = np.zeros((16, 16), np.float32)
  tensors["junk"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError) as e:
    load_vit_npz(_write_npz(tmp_path, tensors), tiny_target)
  msg = str(e.value)
  assert "Missing from the checkpoint (2)" in msg
  assert "Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias" in msg
  assert "\n    cls" in msg
  assert "Unexpected in the checkpoint (2)" in msg
  assert "pre_logits/kernel" in msg and "\n    junk" in msg
  assert "imagenet2012" in msg  # The pre_logits hint.


def test_npz_shape_mismatches_are_all_named(tmp_path, tiny_target):
  tensors = _tiny_npz_tensors()
  tensors["head/kernel"] = np.zeros((16, 21843), np.float32)
  tensors["head/bias"] = np.zeros((21843,), np.float32)
  key = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"
  tensors[key] = np.zeros((16, 4, 4), np.float32)
  with pytest.raises(ValueError) as e:
    load_vit_npz(_write_npz(tmp_path, tensors), tiny_target)
  msg = str(e.value)
  assert "Shape mismatches (3)" in msg
  assert f"{key}: checkpoint (16, 4, 4), model (16, 2, 8)" in msg
  assert "head/kernel: checkpoint (16, 21843), model (16, 1000)" in msg
  assert "head/bias" in msg and "num_outputs" in msg
  assert "Missing" not in msg and "Unexpected" not in msg


def test_npz_wrapped_target_gets_a_hint(tmp_path, tiny_target):
  path = _write_npz(tmp_path, _tiny_npz_tensors())
  with pytest.raises(ValueError, match="params\\['backbone'\\]"):
    load_vit_npz(path, {"params": tiny_target})


def test_npz_posemb_for_another_resolution_is_resized(tmp_path, tiny_target):
  # A 48 px checkpoint (6x6 grid) into the 32 px model (4x4 grid). The grid is
  # linear in (row, col), which order-1 zoom with corner alignment (vit_jax's
  # scipy.ndimage.zoom) keeps exactly linear on the new grid.
  tensors = _tiny_npz_tensors(image_size=48)
  d = _TINY_BACKBONE["hidden_dim"]
  rng = np.random.default_rng(5)
  a, b, c = rng.normal(size=(3, d))
  rows, cols = np.meshgrid(np.arange(6.0), np.arange(6.0), indexing="ij")
  grid = rows[..., None] * a + cols[..., None] * b + c
  cls_row = rng.normal(size=(1, 1, d))
  key = "Transformer/posembed_input/pos_embedding"
  tensors[key] = np.concatenate([cls_row, grid.reshape(1, 36, d)],
                                axis=1).astype(np.float32)
  path = _write_npz(tmp_path, tensors)
  params = load_vit_npz(path, tiny_target)
  pos = params["Transformer"]["posembed_input"]["pos_embedding"]
  assert pos.shape == (1, 17, d)
  np.testing.assert_array_equal(pos[:, :1], tensors[key][:, :1])
  new = np.arange(4.0) * 5 / 3  # Old-grid coordinates of the new grid points.
  rows, cols = np.meshgrid(new, new, indexing="ij")
  expected = (rows[..., None] * a + cols[..., None] * b + c).reshape(16, d)
  np.testing.assert_allclose(pos[0, 1:], expected, rtol=1e-4, atol=1e-4)
  # Everything else loads unchanged.
  np.testing.assert_array_equal(params["embedding"]["kernel"],
                                tensors["embedding/kernel"])
  with pytest.raises(ValueError, match=f"{key}: checkpoint \\(1, 37, 16\\), "
                     "model \\(1, 17, 16\\)") as e:
    load_vit_npz(path, tiny_target, resize_posemb=False)
  assert "resize_posemb=True" in str(e.value)


# --------------------------------------------------------------------------
# The full Hybrid on a tiny backbone.
# --------------------------------------------------------------------------


def test_hybrid_runs_in_train_and_eval_mode():
  model = Hybrid(**_TINY_BACKBONE)
  images = _images()
  variables = _hybrid_variables()
  out = _apply(model, variables, images)
  train_out, state = _apply(model, variables, images, True)
  for o in (out, train_out):
    assert set(o) == {"model0", "vit", "average"}
    assert o["average"].shape == (2, 10)
    np.testing.assert_allclose(o["average"].sum(-1), 1.0, atol=1e-6)
  # Train mode updates the fusion head's BatchNorm statistics only.
  assert set(state["batch_stats"]) == {"fusion"}
  before = variables["batch_stats"]["fusion"]["dense2w_bn"]["mean"]
  after = state["batch_stats"]["fusion"]["dense2w_bn"]["mean"]
  assert np.abs(np.asarray(after) - np.asarray(before)).max() > 0
  # Caching path: the head on cached backbone logits is the full model.
  cached = jax.jit(functools.partial(model.apply, method="backbone_logits"))(
      variables, images)
  assert cached.shape == (2, 1000)
  head_vars = {"params": variables["params"]["fusion"],
               "batch_stats": variables["batch_stats"]["fusion"]}
  head_out = _apply(HybridFusionHead(), head_vars, cached)
  np.testing.assert_allclose(head_out["average"], out["average"], atol=1e-6)


def test_double_normalization_rescales_the_backbone_input():
  images = _images()
  variables = _hybrid_variables()
  double = Hybrid(double_normalization=True, **_TINY_BACKBONE)
  got = double.apply(variables, images, method="backbone_logits")
  want = ViTBackbone(**_TINY_BACKBONE).apply(
      {"params": variables["params"]["backbone"]}, images / 127.5 - 1)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_backbone_gets_exactly_zero_gradient(freeze):
  model = Hybrid(freeze_backbone=freeze, **_TINY_BACKBONE)
  images = _images()
  variables = _hybrid_variables()  # The same tree whether frozen or not.

  @jax.jit
  def grads(params):
    def loss(params):
      out, _ = model.apply({"params": params,
                            "batch_stats": variables["batch_stats"]},
                           images, train=True, mutable=["batch_stats"],
                           rngs={"dropout": jax.random.key(1)})
      return -jnp.log(out["average"][:, 0]).mean()
    return jax.grad(loss)(params)

  g = grads(variables["params"])
  backbone = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g["backbone"]))
  fusion = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g["fusion"]))
  assert fusion > 0
  if freeze:
    assert backbone == 0.0
  else:
    assert backbone > 0


# --------------------------------------------------------------------------
# The bottleneck refinement.
# --------------------------------------------------------------------------


def test_channel_shuffle_interleaves_groups():
  x = jnp.arange(8.0)
  np.testing.assert_array_equal(channel_shuffle(x, 4), [0, 2, 4, 6, 1, 3, 5, 7])


def test_bottleneck_refinement_runs_and_changes_the_output():
  x = _logits()
  model = HybridFusionHead(refinement="bottleneck")
  shapes = _abstract_variables(model, (1, 1000))
  assert _count(shapes["params"]) == 2_580_582 + 1_443_000
  assert shapes["params"]["bottleneck"]["depthwise"]["kernel"].shape == (
      3, 1, 1000)
  # The shared head weights plus a freshly initialised block (on the
  # (B, 2, 500) map it refines).
  plain_vars = _head_variables()
  block = jax.jit(BottleneckRefinement().init)(jax.random.key(3),
                                               jnp.zeros((1, 2, 500)))
  variables = {"params": {**plain_vars["params"], "bottleneck": block["params"]},
               "batch_stats": plain_vars["batch_stats"]}
  assert jax.tree.structure(variables["params"]) == jax.tree.structure(
      shapes["params"])
  out = _apply(model, variables, x)
  np.testing.assert_allclose(out["average"].sum(-1), 1.0, atol=1e-6)
  plain = _apply(HybridFusionHead(), plain_vars, x)
  assert np.abs(np.asarray(out["average"]) - np.asarray(plain["average"])).max() > 1e-4


def test_bottleneck_uses_its_depthwise_conv_and_mixes_groups():
  c, groups = 32, 4
  x = jax.random.normal(jax.random.key(0), (2, 2, c))
  block = BottleneckRefinement(groups=groups)
  variables = jax.jit(block.init)(jax.random.key(1), x)
  assert block.apply(variables, x).shape == x.shape
  width = c // groups

  def first_group_of_output(params):
    return block.apply({"params": params}, x)[..., :width].sum()

  g = jax.jit(jax.grad(first_group_of_output))(variables["params"])
  assert float(jnp.abs(g["depthwise"]["kernel"]).max()) > 0
  # Through group_conv_1 -> shuffle -> depthwise -> group_conv_2, one output
  # group depends on group_conv_1 channels from every group (without the
  # shuffle it would see only its own group).
  kernel_grad = np.abs(np.asarray(g["group_conv_1"]["kernel"]))  # (1, 8, 32)
  for group in range(groups):
    assert kernel_grad[..., group * width:(group + 1) * width].max() > 0
