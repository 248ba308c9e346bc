"""Optimizers and learning-rate schedules from config, all built from optax."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxattn.configlib import ConfigError

SCHEDULES = ("constant", "warmup_cosine", "piecewise_linear", "exponential")
OPTIMIZERS = ("adam", "adamw", "adamax", "sgd")


def lr_batch_scale(config: ml_collections.ConfigDict) -> float:
  """``batch_size / reference_batch_size`` with ``scale_lr_with_batch``
  (the linear scaling rule), else 1."""
  if not config.get("scale_lr_with_batch", False):
    return 1.0
  reference = config.get("reference_batch_size", 0) or config.batch_size
  if reference < 1:
    raise ConfigError(f"config.reference_batch_size={reference} must be a "
                      "positive batch size (the one the learning rates were "
                      "set for).")
  return config.batch_size / reference


def create_learning_rate_fn(config: ml_collections.ConfigDict,
                            steps_per_epoch: int,
                            total_steps: int) -> optax.Schedule:
  """The per-step learning rate, every value scaled by ``lr_batch_scale``."""
  schedule = _schedule(config, steps_per_epoch, total_steps)
  scale = lr_batch_scale(config)
  if scale == 1.0:
    return schedule
  return lambda step: scale * schedule(step)


def _schedule(config: ml_collections.ConfigDict, steps_per_epoch: int,
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
  check_schedule(s)
  warmup_steps = s.warmup_steps or int(round(s.warmup_epochs *
                                             steps_per_epoch))
  if s.name == "piecewise_linear":
    epochs = jnp.array([float(e) for e, _ in s.knots], jnp.float32)
    values = jnp.array([float(v) for _, v in s.knots], jnp.float32)

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
    raise ConfigError(f"Unknown config.schedule.name {s.name!r}; known: "
                      f"{', '.join(SCHEDULES)}.")
  if not warmup_steps:
    return main
  warmup = optax.linear_schedule(s.init_lr, s.lr, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


def check_schedule(s: ml_collections.ConfigDict) -> None:
  """Rejects a ``config.schedule`` that would train wrongly.

  A negative learning rate climbs the loss instead of descending it and a
  NaN destroys the weights; optax accepts both without a word. Each schedule
  kind's own values are checked: rates finite and >= 0, lengths >= 0. A zero
  rate is allowed (it is how a run keeps its weights and only updates
  BatchNorm statistics), except a zero peak under a non-zero ``end_lr``,
  which optax's warmup_cosine silently drops. Called when the config is
  resolved (through ``configlib.check_duration``), before anything is
  written to a workdir.
  """
  if s.name not in SCHEDULES:
    raise ConfigError(f"Unknown config.schedule.name {s.name!r}; known: "
                      f"{', '.join(SCHEDULES)}.")

  def check(key, value, *, positive=False, what="a learning rate",
            example=1e-3):
    if math.isfinite(value) and (value > 0 or (value == 0 and not positive)):
      return
    if math.isfinite(value) and value:
      example = abs(value)  # Most likely a sign typed by mistake.
    raise ConfigError(
        f"config.schedule.{key}={value} must be finite and "
        f"{'> 0' if positive else '>= 0'} ({what} of the {s.name!r} "
        f"schedule); pass e.g. --config.schedule.{key}={example}.")

  # Lengths, in epochs or steps, of the warm-up and the decay.
  for key in ("warmup_epochs", "warmup_steps", "decay_steps"):
    check(key, s[key], what="a length", example=0)
  if s.name == "piecewise_linear":
    knots = [tuple(k) for k in s.knots]
    if len(knots) < 2 or any(len(k) != 2 for k in knots):
      raise ConfigError(
          "config.schedule.knots must be two or more (epoch, lr) pairs; got "
          f"{s.knots}.")
    epochs = [float(e) for e, _ in knots]
    rates = [float(v) for _, v in knots]
    if any(b < a for a, b in zip(epochs, epochs[1:])) or not all(
        math.isfinite(e) and e >= 0 for e in epochs):
      raise ConfigError(
          "config.schedule.knots must have finite, non-negative, "
          f"non-decreasing epochs; got {s.knots}.")
    if not all(math.isfinite(v) and v >= 0 for v in rates):
      raise ConfigError(
          f"config.schedule.knots={s.knots}: every learning rate must be "
          "finite and >= 0, e.g. knots=((0, 0.0), (2, 0.01), (10, 0.0)) in "
          "the config file.")
    return
  check("lr", s.lr, what="the peak learning rate")
  check("init_lr", s.init_lr, what="the learning rate the warm-up starts at")
  if s.name == "warmup_cosine":
    check("end_lr", s.end_lr, what="the final learning rate")
    if s.end_lr and not s.lr:  # optax then decays to 0, not to end_lr.
      raise ConfigError(
          f"config.schedule.lr=0.0 with end_lr={s.end_lr}: the "
          "'warmup_cosine' schedule decays from its peak lr to end_lr, so "
          "the peak must be > 0; pass e.g. --config.schedule.lr="
          f"{10 * s.end_lr}, or --config.schedule.end_lr=0 to not train.")
  if s.name == "exponential":
    # A negative factor gives NaN rates (stepwise: a sign that flips every
    # period); zero stops training after the first period.
    check("decay_rate", s.decay_rate, positive=True,
          what="the factor per decay period", example=0.1)
    check("decay_every_epochs", s.decay_every_epochs, positive=True,
          what="the decay period", example=30.0)


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
    raise ConfigError(f"config.grad_accum_steps={accum} must be >= 1.")
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
    raise ConfigError(f"Unknown config.optimizer.name {o.name!r}; known: "
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
    raise ConfigError(f"config.grad_clip_mode must be 'global' or "
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
    raise ConfigError(f"{key}={pattern!r} is not a valid regular "
                      f"expression: {e}.") from None
  return lambda params: jax.tree.map(lambda path: bool(regex.fullmatch(path)),
                                     param_paths(params))


def frozen_mask(params, pattern: str):
  """True for parameters whose path fully matches the regex `pattern`."""
  return path_matcher(pattern, "config.frozen_params")(params)
