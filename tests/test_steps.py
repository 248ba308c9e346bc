"""jit-sharded, pmap-style (shard_map) and single-device steps agree."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from jaxattn import configlib, losses, optim, parallel, steps
from jaxattn.models import create_model


def _run(mode, num_devices, model, tx, lr_fn, batches):
  mesh = Mesh(np.asarray(jax.devices()[:num_devices]), (parallel.DATA_AXIS,))
  rep, data = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  init = jax.jit(functools.partial(steps.create_train_state, model=model,
                                   tx=tx, input_shape=(8, 8, 3)),
                 out_shardings=rep)
  state = init(jax.random.key_data(jax.random.key(0)))
  step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx,
                                   learning_rate_fn=lr_fn, parallel=mode,
                                   mesh=mesh),
                 out_shardings=(rep, rep), donate_argnums=0)
  losses = []
  for b in batches:
    state, m = step(state, jax.device_put(b, data))
    losses.append(float(m.compute()["loss"]))
  return jax.device_get(state.params), losses


def test_jit_pmap_and_single_device_agree():
  assert jax.device_count() == 4, "conftest sets 4 simulated devices"
  model = create_model("conv_vit", num_classes=5, hidden_dim=16, depth=2,
                       head_channels=8)
  c = configlib.base_config()
  # SGD keeps reduction-order rounding linear; Adam's g/sqrt(v) would blow
  # up the 1e-7 differences of near-zero gradients into sign flips.
  c.optimizer.name, c.optimizer.momentum = "sgd", 0.9
  c.schedule.lr = 0.1
  c.grad_clip_norm = 1.0
  lr_fn = optim.create_learning_rate_fn(c, 1, 1)
  tx = optim.create_optimizer(c, lr_fn)
  rng = np.random.default_rng(0)
  batches = [dict(image=rng.normal(size=(8, 8, 8, 3)).astype(np.float32),
                  label=rng.integers(0, 5, 8)) for _ in range(3)]
  single, single_losses = _run("jit", 1, model, tx, lr_fn, batches)
  sharded, sharded_losses = _run("jit", 4, model, tx, lr_fn, batches)
  pmapped, pmapped_losses = _run("pmap", 4, model, tx, lr_fn, batches)
  np.testing.assert_allclose(sharded_losses, single_losses, rtol=1e-5)
  np.testing.assert_allclose(pmapped_losses, single_losses, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               sharded, single)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               pmapped, single)
  # And the parameters did move: the comparison is not vacuous.
  init_state = steps.create_train_state(
      jax.random.key_data(jax.random.key(0)), model=model, tx=tx,
      input_shape=(8, 8, 3))
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                       single, init_state.params)
  assert max(jax.tree.leaves(moved)) > 1e-3


def test_eval_step_ignores_padding():
  model = create_model("conv_vit", num_classes=3, hidden_dim=8, depth=1,
                       head_channels=4)
  c = configlib.base_config()
  tx = optim.create_optimizer(c, optim.create_learning_rate_fn(c, 1, 1))
  state = steps.create_train_state(jax.random.key_data(jax.random.key(1)),
                                   model=model, tx=tx, input_shape=(4, 4, 3))
  rng = np.random.default_rng(1)
  images = rng.normal(size=(6, 4, 4, 3)).astype(np.float32)
  labels = rng.integers(0, 3, 6)
  full = steps.eval_step(state, dict(image=images[:4], label=labels[:4],
                                     mask=np.ones(4, np.float32)), model=model)
  padded_images = images.copy()
  padded_images[4:] = 100.0  # Garbage in the padding must not count.
  padded = steps.eval_step(
      state, dict(image=padded_images, label=labels,
                  mask=np.array([1, 1, 1, 1, 0, 0], np.float32)), model=model)
  for k, v in full.compute().items():
    np.testing.assert_allclose(padded.compute()[k], v, rtol=1e-6)
  assert int(padded.loss.count) == 4


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_per_example_outputs(smoothing):
  logits = jnp.array([[2.0, 1.0, 0.0, -1.0, -2.0, -3.0],
                      [0.0, 0.0, 0.0, 0.0, 0.0, 5.0]])
  out = losses.per_example_outputs(logits, jnp.array([1, 2]), smoothing)
  np.testing.assert_array_equal(out["top1"], [0.0, 0.0])
  np.testing.assert_array_equal(out["top5"], [1.0, 1.0])
  p = jax.nn.softmax(logits)
  target = jax.nn.one_hot(jnp.array([1, 2]), 6) * (1 - smoothing) + smoothing / 6
  np.testing.assert_allclose(out["loss"], -(target * jnp.log(p)).sum(-1),
                             rtol=1e-5)


def test_frozen_params_do_not_move_and_skip_the_clip_norm():
  model = create_model("conv_vit", num_classes=3, hidden_dim=8, depth=1,
                       head_channels=4)
  c = configlib.base_config()
  c.optimizer.name, c.optimizer.weight_decay = "adamw", 0.1
  c.grad_clip_norm = 1e-3
  c.frozen_params = "embedding/.*|layers_0/attn/q/.*"
  lr_fn = optim.create_learning_rate_fn(c, 1, 1)
  tx = optim.create_optimizer(c, lr_fn)
  state = steps.create_train_state(jax.random.key_data(jax.random.key(2)),
                                   model=model, tx=tx, input_shape=(4, 4, 3))
  rng = np.random.default_rng(2)
  batch = dict(image=rng.normal(size=(4, 4, 4, 3)).astype(np.float32),
               label=rng.integers(0, 3, 4))
  new, _ = steps.train_step(state, batch, model=model, tx=tx,
                            learning_rate_fn=lr_fn)
  paths = optim.param_paths(state.params)
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), state.params,
                       new.params)
  for path, did_move in zip(jax.tree.leaves(paths), jax.tree.leaves(moved)):
    frozen = path.startswith("embedding/") or path.startswith("layers_0/attn/q/")
    assert did_move != frozen, path
  with pytest.raises(ValueError, match="not a valid regular expression"):
    optim.frozen_mask(state.params, "(")


def test_loss_spec_for_dict_outputs_of_probabilities():
  """Seed 000: weighted cross-entropy on softmax outputs, metrics on one."""
  spec = losses.LossSpec(output_weights=(("model0", 0.75), ("vit", 0.25),
                                        ("average", 2.0)),
                        metric_output="average", probabilities=True)
  labels = jnp.array([0, 2])
  p0 = jnp.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
  p1 = jnp.array([[0.2, 0.5, 0.3], [0.3, 0.3, 0.4]])
  out = spec.per_example(dict(model0=p0, vit=p1, average=(p0 + p1) / 2),
                         labels)
  ce = lambda p: -np.log(np.asarray(p)[np.arange(2), labels])  # noqa: E731
  np.testing.assert_allclose(
      out["loss"], 0.75 * ce(p0) + 0.25 * ce(p1) + 2.0 * ce((p0 + p1) / 2),
      rtol=1e-5)
  np.testing.assert_array_equal(out["top1"], [1.0, 1.0])
  with pytest.raises(ValueError, match="config.loss_weights"):
    spec.per_example(dict(model0=p0), labels)
