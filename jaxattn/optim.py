"""Optimizers and learning-rate schedules from config, all built from optax."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ("constant", "warmup_cosine", "piecewise_linear", "exponential")
OPTIMIZERS = ("adam", "adamw", "adamax", "sgd")


def create_learning_rate_fn(config: ml_collections.ConfigDict,
                            steps_per_epoch: int,
                            total_steps: int) -> optax.Schedule:
  """The per-step learning rate. Durations in the config are in epochs.

  * ``constant``: ``lr`` after an optional linear warm-up.
  * ``warmup_cosine``: linear warm-up from ``init_lr`` to ``lr``, cosine
    decay to ``end_lr`` at ``decay_steps`` (default: the last step), then
    ``end_lr`` (seed 000's WarmUpCosine: 0.006 -> 0.03 in 10 steps, 0 after
    step 39,062).
  * ``piecewise_linear``: linear interpolation through ``knots``, a list of
    ``(epoch, lr)`` pairs, evaluated at the fractional epoch
    ``(step + 1) / steps_per_epoch`` as seed 004 sets it every iteration
    (the "one-cycle" 0 -> 0.01 -> 5e-4 -> 0 of its recipe).
  * ``exponential``: ``lr * decay_rate ** (epoch / decay_every_epochs)``,
    stepwise when ``staircase`` (the classic step decay).
  """
  s = config.schedule
  warmup_steps = s.warmup_steps or int(round(s.warmup_epochs *
                                             steps_per_epoch))
  if s.name == "piecewise_linear":
    epochs = jnp.array([float(e) for e, _ in s.knots], jnp.float32)
    values = jnp.array([float(v) for _, v in s.knots], jnp.float32)
    if len(s.knots) < 2 or bool(jnp.any(jnp.diff(epochs) < 0)):
      raise ValueError(
          "config.schedule.knots must be two or more (epoch, lr) pairs with "
          f"non-decreasing epochs; got {s.knots}.")

    def piecewise(step):
      return jnp.interp((step + 1) / steps_per_epoch, epochs, values)

    return piecewise
  if s.name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=s.init_lr, peak_value=s.lr, warmup_steps=warmup_steps,
        decay_steps=max(s.decay_steps or total_steps, warmup_steps + 1),
        end_value=s.end_lr)
  if s.name == "constant":
    main = optax.constant_schedule(s.lr)
  elif s.name == "exponential":
    main = optax.exponential_decay(
        init_value=s.lr,
        transition_steps=max(1, int(round(s.decay_every_epochs *
                                          steps_per_epoch))),
        decay_rate=s.decay_rate, staircase=s.staircase)
  else:
    raise ValueError(f"Unknown config.schedule.name {s.name!r}; known: "
                     f"{', '.join(SCHEDULES)}.")
  if not warmup_steps:
    return main
  warmup = optax.linear_schedule(s.init_lr, s.lr, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


def create_optimizer(config: ml_collections.ConfigDict,
                     learning_rate_fn: optax.Schedule
                     ) -> optax.GradientTransformation:
  """Gradient clipping (optional) followed by the configured optimizer.

  ``config.optimizer.weight_decay_exclude``: a regex over '/'-joined
  parameter paths that get no weight decay (DeiT/timm: biases, norms,
  position embeddings and class tokens). ``config.grad_accum_steps`` = k > 1
  averages the gradients of k consecutive steps and updates once
  (``optax.MultiSteps``): a batch k times larger in k smaller pieces. The
  schedule still counts steps (micro-batches).
  """
  o = config.optimizer
  accum = int(config.get("grad_accum_steps", 1) or 1)
  if accum < 1:
    raise ValueError(f"config.grad_accum_steps={accum} must be >= 1.")
  if accum > 1:  # The optimizer counts updates; the schedule counts steps.
    schedule = learning_rate_fn
    learning_rate_fn = lambda count: schedule(count * accum)
  decay_mask = _decay_mask(o.get("weight_decay_exclude", ""))
  if o.name == "adam":
    opt = optax.adam(learning_rate_fn, b1=o.b1, b2=o.b2, eps=o.eps)
    if o.weight_decay:  # PyTorch Adam's coupled L2 decay.
      opt = optax.chain(optax.add_decayed_weights(o.weight_decay,
                                                  mask=decay_mask), opt)
  elif o.name == "adamw":
    # Decoupled decay (on every parameter unless excluded), as
    # torch.optim.AdamW does.
    opt = optax.adamw(learning_rate_fn, b1=o.b1, b2=o.b2, eps=o.eps,
                      weight_decay=o.weight_decay, mask=decay_mask)
  elif o.name == "adamax":
    opt = optax.adamax(learning_rate_fn, b1=o.b1, b2=o.b2, eps=o.eps)
  elif o.name == "sgd":
    opt = optax.sgd(learning_rate_fn, momentum=o.momentum or None,
                    nesterov=o.nesterov)
    if o.weight_decay:
      opt = optax.chain(optax.add_decayed_weights(o.weight_decay,
                                                  mask=decay_mask), opt)
  else:
    raise ValueError(f"Unknown config.optimizer.name {o.name!r}; known: "
                     f"{', '.join(OPTIMIZERS)}.")
  if config.grad_clip_norm:
    opt = optax.chain(_clip(config.grad_clip_norm, config.grad_clip_mode), opt)
  if config.frozen_params:
    # Frozen parameters get no update, no weight decay, and take no part in
    # the clipping norm: as if PyTorch had requires_grad=False on them.
    opt = optax.multi_transform(
        {"train": opt, "frozen": optax.set_to_zero()},
        lambda params: jax.tree.map(lambda frozen: "frozen" if frozen else
                                    "train", frozen_mask(params,
                                                         config.frozen_params)))
  if accum > 1:
    opt = optax.MultiSteps(opt, every_k_schedule=accum)
  return opt


def _decay_mask(pattern: str):
  """None (decay everything), or params -> True where decay applies."""
  if not pattern:
    return None
  matches = path_matcher(pattern, "config.optimizer.weight_decay_exclude")
  return lambda params: jax.tree.map(lambda excluded: not excluded,
                                     matches(params))


def _clip(max_norm: float, mode: str) -> optax.GradientTransformation:
  if mode == "global":
    return optax.clip_by_global_norm(max_norm)
  if mode != "per_tensor":
    raise ValueError(f"config.grad_clip_mode must be 'global' or "
                     f"'per_tensor', not {mode!r}.")

  def clip_each(updates, state, params=None):
    del params

    def clip(g):
      norm = jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))
      return g * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12)).astype(
          g.dtype)

    return jax.tree.map(clip, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(),
                                      clip_each)


def param_paths(params):
  """The tree of '/'-joined names of each parameter ('layers_0/q/kernel')."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: jax.tree_util.keystr(path, simple=True, separator="/"),
      params)


def path_matcher(pattern: str, key: str):
  """params -> True where the '/'-joined path fully matches `pattern`;
  a bad regex is reported under the config ``key`` that holds it."""
  try:
    regex = re.compile(pattern)
  except re.error as e:
    raise ValueError(f"{key}={pattern!r} is not a valid regular "
                     f"expression: {e}.") from None
  return lambda params: jax.tree.map(lambda path: bool(regex.fullmatch(path)),
                                     param_paths(params))


def frozen_mask(params, pattern: str):
  """True for parameters whose path fully matches the regex `pattern`."""
  return path_matcher(pattern, "config.frozen_params")(params)
