"""DeiT/timm-style recipe options: weight EMA, gradient accumulation, a
weight-decay mask and Mixup/CutMix, each checked against its definition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattn import configlib, experiment, mixing, parallel, steps
from jaxattn.models import create_model


def _config(**overrides):
  """A tiny ViT (no BatchNorm, no dropout) on 8x8 RGB inputs, 5 classes."""
  c = configlib.base_config()
  c.num_classes, c.num_channels, c.image_size = 5, 3, (8, 8)
  c.num_steps, c.batch_size = 4, 8
  c.model = dict(name="vit", patch_size=4, hidden_dim=16, depth=1,
                 num_heads=2, mlp_dim=32)
  c.optimizer.name = "adamw"
  c.schedule.lr = 1e-2
  for key, value in overrides.items():
    section, _, field = key.rpartition(".")
    (c[section] if section else c)[field] = value
  return c


def _batches(n, batch_size, seed=0):
  rng = np.random.default_rng(seed)
  return [dict(image=rng.normal(size=(batch_size, 8, 8, 3)).astype(np.float32),
               label=rng.integers(0, 5, batch_size)) for _ in range(n)]


def _train(config, batches):
  exp = experiment.Experiment(config, data="none")
  state = exp.init_state()
  for batch in batches:
    state, _ = exp.train_fn(state, parallel.global_batch(batch,
                                                         exp.batch_sharding))
  return exp, jax.device_get(state)


def _close(a, b, **kw):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **kw), a, b)


# ----------------------------------------------------------------------------
# Weight EMA.
# ----------------------------------------------------------------------------
def test_ema_follows_its_recursion_and_evaluation_uses_it():
  config = _config(ema_decay=0.5)
  exp = experiment.Experiment(config, data="none")
  state = exp.init_state()
  expected = jax.device_get(state.params)
  for batch in _batches(3, 8):
    state, _ = exp.train_fn(state, parallel.global_batch(batch,
                                                         exp.batch_sharding))
    params = jax.device_get(state.params)
    expected = jax.tree.map(lambda e, p: 0.5 * e + 0.5 * p, expected, params)
  _close(jax.device_get(state.ema_params), expected, rtol=1e-5, atol=1e-7)
  # The EMA is not the weights themselves (the check is not vacuous).
  assert not np.allclose(jax.tree.leaves(expected)[0],
                         jax.tree.leaves(params)[0])
  batch = dict(_batches(1, 8, seed=9)[0], mask=np.ones(8, np.float32))
  batch = parallel.global_batch(batch, exp.batch_sharding)
  ema_loss = float(exp.eval_fn(state, batch).compute()["loss"])
  swapped = state.replace(params=state.ema_params)
  raw = experiment.Experiment(_config(ema_decay=0.5, eval_ema=False),
                              data="none")
  assert ema_loss == pytest.approx(
      float(raw.eval_fn(swapped, batch).compute()["loss"]), rel=1e-6)
  assert ema_loss != pytest.approx(
      float(raw.eval_fn(state, batch).compute()["loss"]), rel=1e-4)
  assert exp.eval_variables(state)["params"] is state.ema_params


def test_no_ema_by_default():
  exp, state = _train(_config(), _batches(1, 8))
  assert state.ema_params is None and not exp.use_ema


# ----------------------------------------------------------------------------
# Gradient accumulation.
# ----------------------------------------------------------------------------
def test_accumulating_two_half_batches_equals_one_full_batch():
  full = _batches(2, 8)
  halves = [dict(image=b["image"][s], label=b["label"][s])
            for b in full for s in (slice(0, 4), slice(4, 8))]
  # SGD is linear in the gradient; Adam's g / sqrt(v) would turn the 1e-9
  # rounding of gradients that are exactly 0 in theory (the attention key's
  # bias) into +-lr steps.
  sgd = {"optimizer.name": "sgd", "schedule.lr": 0.1}
  _, big = _train(_config(batch_size=8, **sgd), full)
  _, accumulated = _train(_config(batch_size=4, grad_accum_steps=2, **sgd),
                          halves)
  _close(accumulated.params, big.params, rtol=1e-4, atol=1e-6)
  # One update per two steps: after one half batch nothing moved.
  exp, one = _train(_config(batch_size=4, grad_accum_steps=2), halves[:1])
  _close(one.params, jax.device_get(exp.init_state().params), atol=0)


def test_accumulation_keeps_the_schedule_in_steps():
  config = _config(batch_size=4, grad_accum_steps=2)
  config.schedule.update(name="piecewise_linear",
                         knots=((0.0, 0.0), (1.0, 1.0)))
  exp = experiment.Experiment(config, data="none")
  # The optimizer's 2nd update happens at step 4: the schedule's value there.
  assert float(exp.learning_rate_fn(3)) == pytest.approx(4 / exp.steps_per_epoch)


# ----------------------------------------------------------------------------
# Weight-decay mask.
# ----------------------------------------------------------------------------
def test_weight_decay_exclude_leaves_matching_parameters_undecayed():
  config = _config(**{"optimizer.weight_decay": 0.5,
                      "optimizer.weight_decay_exclude": r".*(bias|scale).*"})
  exp = experiment.Experiment(config, data="none")
  params = jax.device_get(exp.init_state().params)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = exp.tx.update(zero_grads, exp.tx.init(params), params)
  flat = {jax.tree_util.keystr(k, simple=True, separator="/"): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(updates)}
  for path, update in flat.items():
    if path.endswith(("bias", "scale")):
      assert not update.any(), path
  kernels = [u for p, u in flat.items() if p.endswith("kernel")]
  assert kernels and all(u.any() for u in kernels)  # Decay still applies.


def test_a_bad_weight_decay_regex_names_its_key():
  with pytest.raises(ValueError, match="weight_decay_exclude='\\('"):
    experiment.Experiment(_config(**{"optimizer.weight_decay": 0.1,
                                     "optimizer.weight_decay_exclude": "("}),
                          data="none")


# ----------------------------------------------------------------------------
# Mixup and CutMix.
# ----------------------------------------------------------------------------
def _timm_target(labels, classes, lam, smoothing):
  """timm.data.mixup.mixup_target, in NumPy."""
  off, on = smoothing / classes, 1 - smoothing + smoothing / classes
  one_hot = lambda y: np.where(np.eye(classes)[y] > 0, on, off)
  return lam * one_hot(labels) + (1 - lam) * one_hot(labels[::-1])


def test_mixup_blends_with_the_reversed_batch_and_mixes_smoothed_targets():
  images = np.random.default_rng(0).normal(size=(6, 8, 8, 3)).astype(
      np.float32)
  labels = np.array([0, 1, 2, 3, 4, 0])
  spec = mixing.MixSpec(mixup_alpha=0.8, label_smoothing=0.1)
  mixed, targets = mixing.mix_batch(jax.random.key(3), images, labels, 5, spec)
  # Recover lam from one pixel; every pixel must agree with it.
  lam = float((mixed[0, 0, 0, 0] - images[-1, 0, 0, 0]) /
              (images[0, 0, 0, 0] - images[-1, 0, 0, 0]))
  assert 0 < lam < 1
  np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[::-1],
                             atol=1e-5)
  np.testing.assert_allclose(targets, _timm_target(labels, 5, lam, 0.1),
                             atol=1e-5)


def test_cutmix_pastes_a_box_and_weighs_targets_by_its_area():
  images = np.zeros((4, 16, 16, 1), np.float32)
  images[:2] = 1.0  # Reversed, examples 0-1 receive pixels of zeros.
  labels = np.array([1, 1, 3, 3])
  spec = mixing.MixSpec(cutmix_alpha=1.0)
  for seed in range(5):
    mixed, targets = mixing.mix_batch(jax.random.key(seed), images, labels, 5,
                                      spec)
    pasted = 1.0 - np.asarray(mixed[0, ..., 0])  # 1 where the box is.
    rows, cols = np.nonzero(pasted)
    if rows.size:  # One axis-aligned rectangle.
      box = pasted[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
      assert box.all()
    lam = 1 - pasted.mean()  # The area kept, as timm corrects it.
    np.testing.assert_allclose(targets, _timm_target(labels, 5, lam, 0.0),
                               atol=1e-6)


def test_prob_zero_leaves_the_batch_and_smooths_the_targets():
  images = np.random.default_rng(1).normal(size=(4, 8, 8, 3)).astype(
      np.float32)
  labels = np.array([0, 1, 2, 3])
  spec = mixing.MixSpec(mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.0,
                        label_smoothing=0.2)
  mixed, targets = mixing.mix_batch(jax.random.key(0), images, labels, 5, spec)
  np.testing.assert_array_equal(mixed, images)
  np.testing.assert_allclose(targets, _timm_target(labels, 5, 1.0, 0.2),
                             atol=1e-6)


def test_the_train_step_mixes_from_the_step_key():
  batches = _batches(2, 8)
  _, plain = _train(_config(), batches)
  _, mixed = _train(_config(**{"mixup.mixup_alpha": 0.8}), batches)
  _, again = _train(_config(**{"mixup.mixup_alpha": 0.8}), batches)
  assert not np.allclose(jax.tree.leaves(plain.params)[0],
                         jax.tree.leaves(mixed.params)[0])
  _close(again.params, mixed.params, atol=0)  # Same keys, same draws.


def test_bad_mixup_settings_are_reported():
  with pytest.raises(ValueError, match="config.mixup=.*alphas must be >= 0"):
    experiment.Experiment(_config(**{"mixup.mixup_alpha": -1.0}), data="none")


def test_create_train_state_without_ema_keeps_the_old_layout():
  model = create_model("vit", num_classes=5, patch_size=4, hidden_dim=16,
                       depth=1, num_heads=2, mlp_dim=32)
  exp = experiment.Experiment(_config(), data="none")
  state = steps.create_train_state(jax.random.key_data(jax.random.key(0)),
                                   model=model, tx=exp.tx,
                                   input_shape=(8, 8, 3))
  assert state.ema_params is None


def test_ema_weights_are_checkpointed_and_used_by_load(tmp_path):
  import jaxattn  # pylint: disable=g-import-not-at-top
  from jaxattn import train  # pylint: disable=g-import-not-at-top
  from tests.conftest import REPO  # pylint: disable=g-import-not-at-top
  config = configlib.load(f"{REPO}/configs/quickstart.py:smoke",
                          dict(num_epochs=0, num_steps=3, ema_decay=0.5,
                               val_split="", test_split=""))
  train.train_and_evaluate(config, str(tmp_path))
  state, _, _ = experiment.Experiment.for_workdir(str(tmp_path)).restore()
  _, variables, _ = jaxattn.load(str(tmp_path))
  _close(variables["params"], jax.device_get(state.ema_params), atol=0)
  assert not np.allclose(jax.tree.leaves(variables["params"])[0],
                         jax.tree.leaves(jax.device_get(state.params))[0])
