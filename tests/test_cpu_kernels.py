"""jaxattn.models.cpu_kernels.conv2d and layers.Conv2d: the space-to-depth
form of strided convolutions equals XLA's convolution, forward and backward,
and the layer has nn.Conv's parameters, init and outputs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattn.models import cpu_kernels, layers


def _lax_conv(x, kernel, strides, padding):
  return jax.lax.conv_general_dilated(
      x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST)


# (height, width, kernel, stride, padding, in, out): seed 003's 6x6/2 convs
# on 30x30 and 15x15 (odd: the last block is half padding), a 1x1/2 ResNet
# downsample, a stride 3, non-square kernels' strides, and pass-through cases
# (3x3/2 and 7x7/2, which the stride does not divide, and stride 1).
_CASES = [
    (30, 30, (6, 6), (2, 2), 2, 12, 24),
    (15, 15, (6, 6), (2, 2), 2, 24, 32),
    (16, 16, (1, 1), (2, 2), 0, 8, 16),
    (17, 19, (6, 6), (3, 3), 1, 3, 5),
    (9, 10, (4, 2), (2, 1), 1, 2, 3),
    (16, 16, (3, 3), (2, 2), 1, 4, 4),
    (20, 20, (7, 7), (2, 2), 3, 3, 8),
    (8, 8, (3, 3), (1, 1), 1, 2, 3),
]


@pytest.mark.parametrize("h, w, kernel_size, strides, pad, c, o", _CASES)
def test_conv2d_equals_lax_conv_forward_and_backward(h, w, kernel_size,
                                                     strides, pad, c, o):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, h, w, c)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((*kernel_size, c, o)), jnp.float32)
  padding = ((pad, pad), (pad, pad))
  cotangent = jnp.asarray(
      rng.standard_normal(_lax_conv(x, kernel, strides, padding).shape),
      jnp.float32)

  def loss(conv, x, kernel):
    with jax.default_matmul_precision("float32"):
      return jnp.sum(conv(x, kernel, strides, padding) * cotangent)

  expected = _lax_conv(x, kernel, strides, padding)
  with jax.default_matmul_precision("float32"):
    got = cpu_kernels.conv2d(x, kernel, strides, padding)
  assert got.shape == expected.shape
  scale = float(jnp.abs(expected).max())
  np.testing.assert_allclose(got, expected, atol=2e-6 * scale, rtol=0)
  expected_grads = jax.grad(loss, argnums=(1, 2))(_lax_conv, x, kernel)
  grads = jax.grad(loss, argnums=(1, 2))(cpu_kernels.conv2d, x, kernel)
  for g, e in zip(grads, expected_grads):
    np.testing.assert_allclose(g, e, atol=2e-6 * float(jnp.abs(e).max()),
                               rtol=0)


def test_conv2d_layer_has_nn_conv_parameters_init_and_outputs():
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 15, 15, 12)),
                  jnp.float32)
  kwargs = dict(strides=(2, 2), padding=((2, 2), (2, 2)),
                kernel_init=layers.kernel_init,
                bias_init=layers.bias_init(432), name="conv_4")
  ours = layers.Conv2d(24, (6, 6), **kwargs)
  flax_conv = nn.Conv(24, (6, 6), **kwargs)
  ours_vars = ours.init(jax.random.key(3), x)
  flax_vars = flax_conv.init(jax.random.key(3), x)
  assert jax.tree.structure(ours_vars) == jax.tree.structure(flax_vars)
  for a, b in zip(jax.tree.leaves(ours_vars), jax.tree.leaves(flax_vars)):
    np.testing.assert_array_equal(a, b)  # Same names, shapes and draws.
  with jax.default_matmul_precision("float32"):
    np.testing.assert_allclose(ours.apply(ours_vars, x),
                               flax_conv.apply(flax_vars, x), atol=2e-6)


def test_layers_conv_keeps_grouped_convs_as_nn_conv():
  grouped = layers.conv(8, (3, 3), 9, "g", jnp.float32,
                        padding=((1, 1), (1, 1)), feature_group_count=4)
  plain = layers.conv(8, (1, 1), 4, "p", jnp.float32)
  assert isinstance(grouped, nn.Conv)
  assert isinstance(plain, layers.Conv2d) and plain.padding == (
      (0, 0), (0, 0))


@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (2, 9, 7, 2), (1, 5, 6, 4)])
def test_max_pool_gradient_goes_where_xla_routes_it(shape):
  rng = np.random.default_rng(0)
  x = rng.standard_normal(shape).astype(np.float32)
  x[rng.random(shape) < 0.4] = 0.0  # Post-ReLU maps: many tied zeros.
  x[0, 0, 0] = x[0, 0, 1]  # A tie at a positive value in one window.
  x = jnp.asarray(x)

  def xla_pool(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

  np.testing.assert_array_equal(cpu_kernels.max_pool_3x3_s2(x), xla_pool(x))
  cotangent = jnp.asarray(rng.standard_normal(xla_pool(x).shape), jnp.float32)
  expected = jax.grad(lambda x: jnp.sum(xla_pool(x) * cotangent))(x)
  got = jax.grad(lambda x: jnp.sum(cpu_kernels.max_pool_3x3_s2(x) * cotangent))(x)
  # Equal up to the order of the sums where windows overlap.
  np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
  # Each window's cotangent goes to one pixel only: totals are conserved.
  np.testing.assert_allclose(got.sum(), cotangent.sum(), rtol=1e-5)


def test_batch_norm_layer_is_nn_batch_norm_with_its_gradients():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((8, 5, 5, 6)) * 3 + 1, jnp.float32)
  ours = layers.BatchNorm(use_running_average=False)
  flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
  variables = flax_bn.init(jax.random.key(0), x)
  assert jax.tree.structure(ours.init(jax.random.key(0), x)) == (
      jax.tree.structure(variables))
  cotangent = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)

  def loss(module, params, x):
    y, stats = module.apply({"params": params,
                             "batch_stats": variables["batch_stats"]}, x,
                            mutable=["batch_stats"])
    return jnp.sum(y * cotangent), (y, stats)

  (_, (y_ours, stats_ours)), grads_ours = jax.value_and_grad(
      loss, argnums=(1, 2), has_aux=True)(ours, variables["params"], x)
  (_, (y_flax, stats_flax)), grads_flax = jax.value_and_grad(
      loss, argnums=(1, 2), has_aux=True)(flax_bn, variables["params"], x)
  np.testing.assert_allclose(y_ours, y_flax, atol=1e-6)
  for a, b in zip(jax.tree.leaves((stats_ours, grads_ours)),
                  jax.tree.leaves((stats_flax, grads_flax))):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)
  eval_bn = layers.BatchNorm(use_running_average=True)
  flax_eval = nn.BatchNorm(use_running_average=True, epsilon=1e-5)
  trained = {"params": variables["params"], **stats_flax}
  np.testing.assert_array_equal(eval_bn.apply(trained, x),
                                flax_eval.apply(trained, x))
