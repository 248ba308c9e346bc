"""Train state, metrics and the pure train/eval step functions.

``train_step`` exists in two forms with the same result:

* ``parallel="jit"``: one program over the global batch; XLA partitions it
  over the mesh (the batch is sharded, parameters replicated) and inserts the
  gradient all-reduce itself. BatchNorm statistics are those of the global
  batch.
* ``parallel="pmap"``: the classic per-device program (``jax.shard_map``, the
  successor of ``jax.pmap``): each device computes gradients on its slice and
  ``lax.pmean`` averages them. BatchNorm statistics are per device and their
  running averages are averaged after the step.
"""


import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metrics
from jax.sharding import Mesh, PartitionSpec as P

from jaxattn import mixing
from jaxattn.configlib import ConfigError
from jaxattn.data import on_device
from jaxattn.losses import LossSpec
from jaxattn.parallel import DATA_AXIS

PyTree = Any
Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: PyTree
  batch_stats: PyTree  # {} for models without BatchNorm.
  opt_state: optax.OptState
  rng: jax.Array  # Raw uint32 key; per-step keys are folded in from `step`.
  # The weights' exponential moving average (config.ema_decay); None: off.
  ema_params: PyTree = None

  def variables(self, use_ema: bool = False) -> dict[str, PyTree]:
    """Flax variables of the model; ``use_ema``: the EMA weights (when the
    run keeps them) with the current BatchNorm statistics."""
    params = (self.ema_params if use_ema and self.ema_params is not None
              else self.params)
    return variables_of(params, self.batch_stats)


def variables_of(params: PyTree, batch_stats: PyTree) -> dict[str, PyTree]:
  variables = {"params": params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  return variables


# Folded into the step's key for Mixup/CutMix draws ("mix").
_MIX_STREAM = 0x6D6978
# No step can be this late: "no non-finite loss yet".
_NEVER = jnp.iinfo(jnp.int32).max


@flax.struct.dataclass
class FirstNonFiniteStep(metrics.Metric):
  """The first step (1-based, as the loop counts) whose loss was NaN or inf.

  Computed in the step and merged with ``min`` like the other metrics, so
  the loop learns which step went bad from the metrics it brings to the host
  anyway (``jaxattn/dispatch.py``), without a sync per step. Merged and
  computed on the host, in NumPy. ``compute()`` is 0 when every loss was
  finite.
  """

  step: jax.Array

  @classmethod
  def from_model_output(cls, *, loss: jax.Array, step: jax.Array,
                        **_) -> "FirstNonFiniteStep":
    finite = jnp.all(jnp.isfinite(loss))
    return cls(step=jnp.where(finite, _NEVER, step).astype(jnp.int32))

  def merge(self, other: "FirstNonFiniteStep") -> "FirstNonFiniteStep":
    return type(self)(step=np.minimum(self.step, other.step))

  def compute(self) -> np.ndarray:
    return np.where(self.step == _NEVER, 0, self.step)


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output("loss")
  accuracy: metrics.Average.from_output("top1")
  top5_accuracy: metrics.Average.from_output("top5")
  learning_rate: metrics.LastValue.from_output("learning_rate")
  first_nonfinite_step: FirstNonFiniteStep


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
  loss: metrics.Average.from_output("loss")
  accuracy: metrics.Average.from_output("top1")
  top5_accuracy: metrics.Average.from_output("top5")


def create_train_state(rng: jax.Array, *, model: nn.Module,
                       tx: optax.GradientTransformation,
                       input_shape: tuple[int, ...],
                       ema: bool = False) -> TrainState:
  """Initial state; jit it with out_shardings to create it already sharded.

  ``input_shape`` is one example of what ``model.__call__`` takes (an image
  for most models; see ``ModelInterface.init_shape``).
  """
  init_rng, state_rng = jax.random.split(rng)
  dummy = jnp.zeros((1, *input_shape), jnp.float32)
  variables = model.init({"params": init_rng, "dropout": init_rng}, dummy,
                         train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params), rng=state_rng,
                    ema_params=params if ema else None)


def _update(state: TrainState, batch: Batch, *, model: nn.Module,
            tx: optax.GradientTransformation, loss_spec: LossSpec,
            method: str | None = None, ema_decay: float = 0.0,
            grad_accum_steps: int = 1, axis_name: str | None = None
            ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update; with `axis_name`, on one device's slice."""
  rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:  # Independent dropout masks per device.
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  mutable = ["batch_stats"] if state.batch_stats else False

  def loss_fn(params):
    out = model.apply(variables_of(params, state.batch_stats), batch["image"],
                      train=True, mutable=mutable, rngs={"dropout": rng},
                      method=method)
    model_output, new_vars = out if mutable else (out, {})
    outputs = loss_spec.per_example(model_output, batch["label"],
                                    batch.get("targets"))
    return outputs["loss"].mean(), (outputs, new_vars.get("batch_stats", {}))

  grads, (outputs, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
    batch_stats = jax.lax.pmean(batch_stats, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params,
                            batch_stats=batch_stats, opt_state=opt_state)
  if ema_decay:
    # After each optimizer update (every grad_accum_steps-th step).
    updated = (state.step + 1) % grad_accum_steps == 0
    moved = optax.incremental_update(params, state.ema_params,
                                     step_size=1.0 - ema_decay)
    new_state = new_state.replace(ema_params=jax.tree.map(
        lambda new, old: jnp.where(updated, new, old), moved,
        state.ema_params))
  return new_state, outputs


def train_step(state: TrainState, batch: Batch, *, model: nn.Module,
               tx: optax.GradientTransformation, learning_rate_fn,
               num_classes: int = 0,
               loss_spec: LossSpec = LossSpec(), method: str | None = None,
               mix: mixing.MixSpec = mixing.MixSpec(), ema_decay: float = 0.0,
               grad_accum_steps: int = 1, parallel: str = "jit",
               mesh: Mesh | None = None,
               pixel_mean: tuple[float, ...] = (0.0,),
               pixel_std: tuple[float, ...] = (1.0,)
               ) -> tuple[TrainState, TrainMetrics]:
  """One step on a global batch; returns the new state and its metrics.

  A batch of uint8 images (the pipeline's) is first standardised with
  ``pixel_mean`` / ``pixel_std`` and RandomErased with its ``"erase"`` boxes
  (``jaxattn/data/on_device.py``); float images are taken as they are.

  ``method`` is the model method that takes the batch's inputs (None:
  ``__call__``; see ``Experiment.with_features``). ``mix``: Mixup / CutMix
  of the global batch from the step's key. ``ema_decay``: keep the weights'
  EMA in ``state.ema_params`` (updated with the optimizer's updates, every
  ``grad_accum_steps`` steps).
  """
  update = functools.partial(_update, model=model, tx=tx,
                             loss_spec=loss_spec, method=method,
                             ema_decay=ema_decay,
                             grad_accum_steps=grad_accum_steps)
  batch = on_device.prepare_batch(batch, pixel_mean=pixel_mean,
                                  pixel_std=pixel_std)
  if mix.enabled:  # Its own stream: dropout keys stay as without mixing.
    if not num_classes:
      raise ValueError("Mixup/CutMix needs num_classes for its targets.")
    key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step),
                             _MIX_STREAM)
    images, targets = mixing.mix_batch(key, batch["image"], batch["label"],
                                       num_classes, mix)
    batch = dict(batch, image=images, targets=targets)
  if parallel == "pmap":
    # check_vma=False gives pmap's semantics: gradients stay per device
    # until the explicit pmean. (With it on, differentiating replicated
    # params against sharded data already psums them: a 4x gradient.)
    update = jax.shard_map(
        functools.partial(update, axis_name=DATA_AXIS), mesh=mesh,
        in_specs=(P(), P(DATA_AXIS)), out_specs=(P(), P(DATA_AXIS)),
        check_vma=False)
  elif parallel != "jit":
    raise ConfigError(f"config.parallel must be 'jit' or 'pmap', not {parallel!r}.")
  new_state, outputs = update(state, batch)
  step_metrics = TrainMetrics.single_from_model_output(
      learning_rate=learning_rate_fn(state.step), step=state.step + 1,
      **outputs)
  return new_state, step_metrics


def eval_step(state: TrainState, batch: Batch, *, model: nn.Module,
              loss_spec: LossSpec = LossSpec(), method: str | None = None,
              use_ema: bool = False, pixel_mean: tuple[float, ...] = (0.0,),
              pixel_std: tuple[float, ...] = (1.0,)) -> EvalMetrics:
  """Metrics of one padded batch; examples with mask 0 do not count.

  uint8 images are standardised first, as in `train_step`."""
  batch = on_device.prepare_batch(batch, pixel_mean=pixel_mean,
                                  pixel_std=pixel_std)
  output = model.apply(state.variables(use_ema), batch["image"], train=False,
                       method=method)
  return EvalMetrics.single_from_model_output(
      mask=batch["mask"], **loss_spec.per_example(output, batch["label"]))
