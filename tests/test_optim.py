import numpy as np
import pytest

from jaxattn import configlib, optim, recipes


def _config(**schedule):
  c = configlib.base_config()
  c.schedule.update(schedule)
  return c


def test_seed004_one_cycle_matches_the_seed_log():
  """End-of-epoch lr printed by seed 004 (391 iterations per epoch)."""
  c = recipes.seed004_conv_vit()
  spe = 391
  lr = optim.create_learning_rate_fn(c, spe, 25 * spe)
  logged = [0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009,
            0.010, 0.009050, 0.0081, 0.00715, 0.0062, 0.00525, 0.0043,
            0.00335, 0.0024, 0.00145, 0.0005, 0.0004, 0.0003, 0.0002, 0.0001,
            0.0]
  got = [float(lr(spe * (e + 1) - 1)) for e in range(25)]
  np.testing.assert_allclose(got, logged, atol=1e-7)
  # Set every iteration: the first step already has a non-zero rate.
  assert 0 < float(lr(0)) < 1e-5


def test_seed000_step_decay_is_expressible():
  """lr = 1e-4 * 0.96 ** floor(1 + epoch / 4) (seed 000's scheduler)."""
  c = _config(name="exponential", lr=1e-4 * 0.96, decay_rate=0.96,
              decay_every_epochs=4.0, staircase=True)
  spe = 10
  lr = optim.create_learning_rate_fn(c, spe, 50 * spe)
  for epoch in range(12):
    expected = 1e-4 * 0.96 ** np.floor(1 + epoch / 4)
    np.testing.assert_allclose(float(lr(epoch * spe + 3)), expected, rtol=1e-6)


def test_warmup_cosine_endpoints():
  c = _config(name="warmup_cosine", lr=0.1, warmup_epochs=1.0, end_lr=0.0)
  lr = optim.create_learning_rate_fn(c, 100, 1000)
  assert float(lr(0)) == 0.0
  np.testing.assert_allclose(float(lr(100)), 0.1, rtol=1e-6)
  assert float(lr(1000)) < 1e-6


def test_constant_with_warmup():
  c = _config(name="constant", lr=0.5, warmup_epochs=2.0)
  lr = optim.create_learning_rate_fn(c, 10, 100)
  np.testing.assert_allclose([float(lr(s)) for s in (0, 10, 20, 90)],
                             [0.0, 0.25, 0.5, 0.5], rtol=1e-6)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_every_optimizer_builds_and_steps(name):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  c = configlib.base_config()
  c.optimizer.name = name
  c.optimizer.weight_decay = 0.1 if name != "adamax" else 0.0
  c.grad_clip_norm = 1.0
  tx = optim.create_optimizer(c, optim.create_learning_rate_fn(c, 1, 1))
  params = {"w": jnp.ones(3)}
  updates, _ = tx.update({"w": jnp.full(3, 10.0)}, tx.init(params), params)
  assert np.all(np.asarray(updates["w"]) < 0)


def test_unknown_names_are_reported():
  c = configlib.base_config()
  c.optimizer.name = "adamm"
  with pytest.raises(ValueError, match="adamw"):
    optim.create_optimizer(c, lambda s: 0.1)
  c = _config(name="cosine")
  with pytest.raises(ValueError, match="warmup_cosine"):
    optim.create_learning_rate_fn(c, 1, 1)
  c = _config(name="piecewise_linear", knots=((0.0, 1.0),))
  with pytest.raises(ValueError, match="two or more"):
    optim.create_learning_rate_fn(c, 1, 1)


def test_seed000_warmup_cosine():
  """Keras WarmUpCosine(base 0.03, total 39,062, warmup 0.006 over 10)."""
  c = _config(name="warmup_cosine", lr=0.03, init_lr=0.006, warmup_steps=10,
              decay_steps=39_062, end_lr=0.0)
  lr = optim.create_learning_rate_fn(c, 782, 90 * 782)
  np.testing.assert_allclose(float(lr(0)), 0.006, rtol=1e-6)
  np.testing.assert_allclose(float(lr(5)), 0.006 + 5 * 0.0024, rtol=1e-5)
  np.testing.assert_allclose(float(lr(10)), 0.03, rtol=1e-6)
  mid = 10 + (39_062 - 10) // 2
  np.testing.assert_allclose(float(lr(mid)), 0.015, rtol=1e-3)
  assert float(lr(39_062)) == 0.0 and float(lr(60_000)) == 0.0


def test_per_tensor_clipping_is_keras_clipnorm():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  c = configlib.base_config()
  c.optimizer.name, c.schedule.lr = "sgd", 1.0
  c.optimizer.momentum = 0.0
  c.grad_clip_norm, c.grad_clip_mode = 1.0, "per_tensor"
  tx = optim.create_optimizer(c, optim.create_learning_rate_fn(c, 1, 1))
  params = {"a": jnp.zeros(2), "b": jnp.zeros(1)}
  grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.5])}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["a"], [-0.6, -0.8], rtol=1e-6)
  np.testing.assert_allclose(updates["b"], [-0.5], rtol=1e-6)
  c.grad_clip_mode = "layer"
  with pytest.raises(ValueError, match="per_tensor"):
    optim.create_optimizer(c, optim.create_learning_rate_fn(c, 1, 1))
