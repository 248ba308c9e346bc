"""Tests for jaxattn.models.transformer: one attention, two parameter layouts."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxattn.models.transformer import (TORCH_LINEAR, VIT_JAX,
                                        MultiHeadSelfAttention)


def test_vit_jax_layout_is_flax_multi_head_dot_product_attention():
  """Same parameter tree and init values from the same key, same outputs:
  what lets published vit_jax checkpoints load into the backbone."""
  x = jax.random.normal(jax.random.key(0), (2, 5, 12))
  ours = MultiHeadSelfAttention(num_heads=3, **VIT_JAX)
  flax_mha = nn.MultiHeadDotProductAttention(
      num_heads=3, kernel_init=nn.initializers.xavier_uniform(),
      deterministic=True)
  variables = ours.init(jax.random.key(1), x)
  reference = flax_mha.init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, variables, reference)
  assert variables["params"]["query"]["kernel"].shape == (12, 3, 4)
  assert variables["params"]["out"]["kernel"].shape == (3, 4, 12)
  np.testing.assert_allclose(ours.apply(variables, x),
                             flax_mha.apply(reference, x),
                             rtol=1e-6, atol=1e-6)


def test_layouts_compute_the_same_function():
  x = jax.random.normal(jax.random.key(0), (2, 5, 12))
  per_head = MultiHeadSelfAttention(num_heads=3, **VIT_JAX)
  variables = per_head.init(jax.random.key(1), x)
  flat = jax.tree.map(lambda a: a.reshape(12, 12) if a.ndim == 3 else
                      a.reshape(12), variables)
  np.testing.assert_array_equal(
      MultiHeadSelfAttention(num_heads=3, **TORCH_LINEAR).apply(flat, x),
      per_head.apply(variables, x))


def test_bfloat16_compute_keeps_float32_params():
  x = jnp.ones((1, 4, 8), jnp.bfloat16)
  module = MultiHeadSelfAttention(num_heads=2, dtype=jnp.bfloat16, **VIT_JAX)
  variables = module.init(jax.random.key(0), x)
  assert {a.dtype for a in jax.tree.leaves(variables)} == {
      jnp.dtype(jnp.float32)}
  assert module.apply(variables, x).dtype == jnp.bfloat16
