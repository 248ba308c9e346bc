"""Stochastic depth (timm's drop path) in seed 002's ViT and seed 004's conv-ViT.

``drop_path_rate`` is off (0) in every seed config: at 0 the models must be
exactly the seeds' (same parameters, same outputs in train and eval mode).
Above 0, training skips residual branches per example with timm's linearly
increasing per-block rates; evaluation is unchanged. The conv-ViT's chunked
train path must give every row its own masks, as an unchunked run does.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattn import configlib, optim, steps
from jaxattn.models import create_model, kernels, layers
from jaxattn.models.conv_vit import ConvViT, ConvViTBlock
from jaxattn.models.transformer import Seed002EncoderBlock
from jaxattn.models.vit import PatchEmbedding, ViT

# chunk_size=0: the module-by-module path, so train- and eval-mode outputs
# are computed by the same ops and compare exactly.
_TINY = {
    "conv_vit": (ConvViT, dict(num_classes=5, patch_size=2, hidden_dim=16,
                               depth=2, head_channels=4, mlp_ratio=2,
                               chunk_size=0)),
    "vit": (ViT, dict(num_classes=7, patch_size=4, hidden_dim=16, depth=2,
                      num_heads=2, mlp_dim=24)),
}
_FAMILIES = sorted(_TINY)


def _images(batch=4, seed=1):
  return jax.random.normal(jax.random.key(seed), (batch, 8, 12, 3))


def _model(family, **overrides):
  cls, kwargs = _TINY[family]
  return cls(**{**kwargs, **overrides})


@functools.partial(jax.jit, static_argnums=0)
def _init(model, images):
  return model.init(jax.random.key(0), images)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _apply(model, variables, images, train=False, dropout_key=None):
  rngs = {} if dropout_key is None else {"dropout": dropout_key}
  return model.apply(variables, images, train=train, rngs=rngs)


# conv_vit chunks its batch under the CPU kernels only.
_CPU_KERNELS = kernels.Kernels("cpu", "cpu")


@functools.partial(jax.jit, static_argnums=(0, 3))
@functools.partial(kernels.traced_with, _CPU_KERNELS)
def _apply_cpu_kernels(model, variables, images, train=False,
                       dropout_key=None):
  rngs = {} if dropout_key is None else {"dropout": dropout_key}
  return model.apply(variables, images, train=train, rngs=rngs)


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


# --------------------------------------------------------------------------
# The shared helper (jaxattn/models/layers.py).
# --------------------------------------------------------------------------


def test_per_block_rates_increase_linearly_from_zero():
  np.testing.assert_allclose(layers.drop_path_rates(0.1, 4),
                             [0.0, 0.1 / 3, 0.2 / 3, 0.1], rtol=1e-12)
  assert layers.drop_path_rates(0.1, 12)[0] == 0.0
  assert layers.drop_path_rates(0.1, 12)[-1] == pytest.approx(0.1)
  assert layers.drop_path_rates(1.0, 2) == (0.0, 1.0)
  assert layers.drop_path_rates(0.3, 1) == (0.0,)
  assert layers.drop_path_rates(0.0, 3) == (0.0, 0.0, 0.0)
  for bad in (-0.1, 1.5):
    with pytest.raises(ValueError, match="drop_path_rate"):
      layers.drop_path_rates(bad, 4)


class _Scales(nn.Module):
  batch: int
  rate: float
  depth: int
  train: bool = True

  def __call__(self):
    return layers.drop_path_scales(self, self.batch, self.rate, self.depth,
                                   train=self.train)


def test_scales_keep_with_one_minus_rate_and_rescale_kept_examples():
  batch, rate, depth = 20_000, 0.6, 3
  scales = _Scales(batch, rate, depth).apply(
      {}, rngs={"dropout": jax.random.key(0)})
  assert scales[0] is None  # Block 0 has rate 0: no mask, no multiply.
  for i, rate_i in enumerate(layers.drop_path_rates(rate, depth)[1:], 1):
    s = np.asarray(scales[i])
    assert s.shape == (batch, 2) and s.dtype == np.float32
    kept = s > 0
    np.testing.assert_array_equal(s[kept], np.float32(1 / (1 - rate_i)))
    assert abs(kept.mean() - (1 - rate_i)) < 0.015
    assert abs(s.mean() - 1.0) < 0.03  # The expectation is unchanged.
    # Attention and MLP branches are drawn independently, per example.
    assert (kept[:, 0] != kept[:, 1]).any()
  # Outside training, or at rate 0, nothing is drawn (no "dropout" needed).
  assert _Scales(8, rate, depth, train=False).apply({}) == [None] * depth
  assert _Scales(8, 0.0, depth).apply({}) == [None] * depth


def test_drop_path_multiplies_each_example_and_none_is_the_identity():
  x = jnp.arange(24.0).reshape(2, 3, 4).astype(jnp.bfloat16)
  assert layers.drop_path(x, None) is x
  y = layers.drop_path(x, jnp.asarray([0.0, 2.0]))
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(y[0], 0)
  np.testing.assert_array_equal(y[1], 2 * x[1])


# --------------------------------------------------------------------------
# Both families.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("family", _FAMILIES)
def test_rate_zero_is_the_seed_model(family):
  images = _images()
  variables = _init(_model(family), images)
  # The option creates no parameters, at any rate.
  _assert_trees_equal(_init(_model(family, drop_path_rate=0.5), images),
                      variables)
  model = _model(family, drop_path_rate=0.0)
  assert model == _model(family)  # 0.0 is the default.
  # Neither family has dropout: at rate 0 train mode computes eval mode's
  # outputs, and needs no "dropout" key.
  np.testing.assert_array_equal(_apply(model, variables, images, True),
                                _apply(model, variables, images))


@pytest.mark.parametrize("family", _FAMILIES)
def test_positive_rate_acts_in_training_only(family):
  images = _images()
  variables = _init(_model(family), images)
  model = _model(family, drop_path_rate=0.5)
  evaluated = _apply(model, variables, images)
  np.testing.assert_array_equal(
      evaluated, _apply(_model(family), variables, images))
  a = _apply(model, variables, images, True, jax.random.key(1))
  b = _apply(model, variables, images, True, jax.random.key(2))
  again = _apply(model, variables, images, True, jax.random.key(1))
  np.testing.assert_array_equal(a, again)  # A key fixes the masks.
  assert np.abs(a - b).max() > 1e-3
  assert np.abs(a - evaluated).max() > 1e-3
  # Training with it needs the "dropout" stream (the train step passes it).
  with pytest.raises(Exception, match="dropout"):
    model.apply(variables, images, train=True)


def test_conv_vit_last_block_at_rate_one_is_the_identity():
  """Depth 2 at rate 1: block 0 (rate 0) keeps both branches, block 1 (rate
  1) drops both for every example; the pre-norm block is then the identity,
  so the model is the depth-1 model with the same other parameters."""
  images = _images()
  variables = _init(_model("conv_vit"), images)
  model = _model("conv_vit", drop_path_rate=1.0)
  shallow = dict(variables["params"])
  del shallow["layers_1"]
  want = _apply(_model("conv_vit", depth=1), {"params": shallow}, images)
  got = _apply(model, variables, images, True, jax.random.key(3))
  np.testing.assert_array_equal(got, want)
  # And the chunked train path (2 rows per chunk) agrees.
  chunked = _apply_cpu_kernels(
      _model("conv_vit", drop_path_rate=1.0, chunk_size=2), variables, images,
      True, jax.random.key(3))
  np.testing.assert_allclose(chunked, want, rtol=1e-5, atol=1e-6)


def test_vit_last_block_at_rate_one_keeps_only_its_layer_norm():
  """Seed 002's block replaces the stream with LN(x) before both residuals,
  so with both branches dropped block 1 is its LayerNorm alone."""
  _, kwargs = _TINY["vit"]
  images = _images()
  params = _init(_model("vit"), images)["params"]
  x = PatchEmbedding(kwargs["hidden_dim"], kwargs["patch_size"]).apply(
      {"params": params["patch_embedding"]}, images)
  x = Seed002EncoderBlock(kwargs["num_heads"], kwargs["mlp_dim"]).apply(
      {"params": params["transformer_encoder_0"]}, x)
  x = layers.layer_norm(None, jnp.float32).apply(
      {"params": params["transformer_encoder_1"]["layer_norm"]}, x)
  head = params["output_layer"]
  want = x[:, 0] @ head["kernel"] + head["bias"]
  got = _apply(_model("vit", drop_path_rate=1.0), {"params": params}, images,
               True, jax.random.key(3))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("block_cls, args, name", [
    (ConvViTBlock, (4, 2), "conv_vit"), (Seed002EncoderBlock, (2, 24), "vit")])
def test_blocks_with_unit_scales_are_the_blocks_without(block_cls, args, name):
  del name
  x = jax.random.normal(jax.random.key(0), (3, 5, 16))
  block = block_cls(*args)
  variables = block.init(jax.random.key(1), x)
  plain = block.apply(variables, x)
  np.testing.assert_array_equal(block.apply(variables, x, jnp.ones((3, 2))),
                                plain)
  # Dropping both branches of one example: its attention residual is gone.
  scales = jnp.asarray([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
  out = block.apply(variables, x, scales)
  np.testing.assert_array_equal(out[0], plain[0])
  assert np.abs(out[1] - plain[1]).max() > 1e-3


def test_conv_vit_chunks_keep_each_rows_masks_and_gradients():
  """The chunked train path (``kernels.map_in_chunks``, rows interleaved
  over chunks) draws the whole batch's masks once and slices them with the
  images: outputs and gradients are the unchunked run's."""
  images = _images(batch=8)
  variables = _init(_model("conv_vit"), images)
  key = jax.random.key(5)

  def loss_and_grads(chunk_size):
    model = _model("conv_vit", drop_path_rate=0.7, chunk_size=chunk_size)

    def loss(params):
      logits = model.apply({"params": params}, images, train=True,
                           rngs={"dropout": key})
      return jnp.sum(jnp.sin(logits)), logits

    return jax.jit(kernels.traced_with(_CPU_KERNELS, jax.grad(
        loss, has_aux=True)))(variables["params"])

  whole_grads, whole = loss_and_grads(0)
  chunked_grads, chunked = loss_and_grads(2)
  np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4,
                                 atol=1e-6), chunked_grads, whole_grads)
  # Not vacuous: the masks changed this batch's outputs.
  evaluated = _apply(_model("conv_vit"), variables, images)
  assert np.abs(whole - evaluated).max() > 1e-3


def test_train_step_uses_the_dropout_stream():
  model = create_model("vit", num_classes=5, patch_size=4, hidden_dim=16,
                       depth=3, num_heads=2, mlp_dim=24, drop_path_rate=0.5)
  c = configlib.base_config()
  c.optimizer.name = "sgd"
  lr_fn = optim.create_learning_rate_fn(c, 1, 1)
  tx = optim.create_optimizer(c, lr_fn)
  state = steps.create_train_state(jax.random.key_data(jax.random.key(0)),
                                   model=model, tx=tx, input_shape=(8, 8, 3))
  rng = np.random.default_rng(0)
  batch = dict(image=rng.normal(size=(8, 8, 8, 3)).astype(np.float32),
               label=rng.integers(0, 5, 8))
  step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx,
                                   learning_rate_fn=lr_fn))
  off = jax.jit(functools.partial(
      steps.train_step, model=model.clone(drop_path_rate=0.0), tx=tx,
      learning_rate_fn=lr_fn))
  loss = float(step(state, batch)[1].compute()["loss"])
  assert loss == float(step(state, batch)[1].compute()["loss"])
  assert np.isfinite(loss)
  assert abs(loss - float(off(state, batch)[1].compute()["loss"])) > 1e-4


@pytest.mark.parametrize("config_file, name", [
    ("cifar10_vit", "vit"), ("cifar10_convvit", "conv_vit")])
def test_configs_take_the_option_and_seeds_keep_it_off(config_file, name):
  assert configlib.load(config_file).model.drop_path_rate == 0.0
  config = configlib.load(f"{config_file}:smoke",
                          ["model.drop_path_rate=0.1"])
  kwargs = dict(config.model)
  assert kwargs.pop("name") == name
  assert create_model(name, **kwargs).drop_path_rate == 0.1


# --------------------------------------------------------------------------
# The PyTorch twins: the option is accepted; it acts in train() mode only.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("family", _FAMILIES)
def test_torch_twins_accept_the_option(family):
  torch = pytest.importorskip("torch")
  from jaxattn.torch_models import create_torch_model  # pylint: disable=g-import-not-at-top
  _, kwargs = _TINY[family]
  kwargs = dict(kwargs, image_size=(8, 12), in_channels=3)
  torch.manual_seed(0)
  plain = create_torch_model(family, **kwargs).eval()
  model = create_torch_model(family, **kwargs, drop_path_rate=1.0)
  model.load_state_dict(plain.state_dict(), strict=True)
  assert set(model.state_dict()) == set(plain.state_dict())
  x = torch.randn(4, 3, 8, 12)
  with torch.no_grad():
    want = plain(x)
    np.testing.assert_array_equal(model.eval()(x), want)
    trained = model.train()(x)
  assert (trained - want).abs().max() > 1e-3
  if family == "conv_vit":  # Block 1 (rate 1) is then the identity.
    assert model.transformer.drop_path_rates == [0.0, 1.0]
    shallow = create_torch_model(family, **{**kwargs, "depth": 1}).eval()
    shallow.load_state_dict({k: v for k, v in plain.state_dict().items()
                             if ".layers.1." not in k}, strict=True)
    with torch.no_grad():
      torch.testing.assert_close(trained, shallow(x))
  else:
    rates = [b.drop_path_rate for b in model.transformer_encoder]
    assert rates == [0.0, 1.0]
