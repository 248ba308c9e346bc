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


import dataclasses
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from clu import metrics
from jax.sharding import Mesh, PartitionSpec as P

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

  def variables(self) -> dict[str, PyTree]:
    return variables_of(self.params, self.batch_stats)


def variables_of(params: PyTree, batch_stats: PyTree) -> dict[str, PyTree]:
  variables = {"params": params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  return variables


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output("loss")
  accuracy: metrics.Average.from_output("top1")
  top5_accuracy: metrics.Average.from_output("top5")
  learning_rate: metrics.LastValue.from_output("learning_rate")


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
  loss: metrics.Average.from_output("loss")
  accuracy: metrics.Average.from_output("top1")
  top5_accuracy: metrics.Average.from_output("top5")


def create_train_state(rng: jax.Array, *, model: nn.Module,
                       tx: optax.GradientTransformation,
                       image_shape: tuple[int, int, int]) -> TrainState:
  """Initial state; jit it with out_shardings to create it already sharded."""
  init_rng, state_rng = jax.random.split(rng)
  dummy = jnp.zeros((1, *image_shape), jnp.float32)
  variables = model.init({"params": init_rng, "dropout": init_rng}, dummy,
                         train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params), rng=state_rng)


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """How model outputs become a loss and the metrics' logits.

  A model returns logits, or a dict of named outputs (seed 000's hybrid
  returns the probabilities of two heads and their average). For a dict, the
  loss is sum(weight * cross-entropy) over ``output_weights`` and metrics use
  ``metric_output``. ``probabilities`` means outputs are softmax outputs:
  their clipped logarithm serves as logits (Keras' categorical cross-entropy
  on probabilities clips to [1e-7, 1 - 1e-7] the same way).
  """

  label_smoothing: float = 0.0
  output_weights: tuple[tuple[str, float], ...] = ()
  metric_output: str = ""
  probabilities: bool = False

  @classmethod
  def from_config(cls, config) -> "LossSpec":
    return cls(label_smoothing=config.label_smoothing,
               output_weights=tuple(sorted(dict(config.loss_weights).items())),
               metric_output=config.metric_output,
               probabilities=config.model_outputs == "probabilities")

  def as_logits(self, output: jax.Array) -> jax.Array:
    output = output.astype(jnp.float32)
    if self.probabilities:
      return jnp.log(jnp.clip(output, 1e-7, 1.0 - 1e-7))
    return output

  def per_example(self, model_output, labels: jax.Array
                  ) -> dict[str, jax.Array]:
    """Per-example loss and top-1/top-5 hits."""
    if not isinstance(model_output, dict):
      return per_example_outputs(self.as_logits(model_output), labels,
                                 self.label_smoothing)
    missing = [k for k, _ in self.output_weights if k not in model_output]
    if missing or self.metric_output not in model_output:
      raise ValueError(
          f"The model returns outputs {sorted(model_output)}; "
          f"config.loss_weights names {[k for k, _ in self.output_weights]} "
          f"and config.metric_output is {self.metric_output!r}.")
    result = per_example_outputs(self.as_logits(model_output[
        self.metric_output]), labels, self.label_smoothing)
    result["loss"] = sum(
        weight * per_example_outputs(self.as_logits(model_output[name]),
                                     labels, self.label_smoothing)["loss"]
        for name, weight in self.output_weights)
    return result


def per_example_outputs(logits: jax.Array, labels: jax.Array,
                        label_smoothing: float = 0.0) -> dict[str, jax.Array]:
  """Cross-entropy and top-1/top-5 hits for each example."""
  logits = logits.astype(jnp.float32)
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  loss = optax.softmax_cross_entropy(logits, targets)
  top1 = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  k = min(5, num_classes)
  _, top_k = jax.lax.top_k(logits, k)
  top5 = jnp.any(top_k == labels[:, None], axis=-1).astype(jnp.float32)
  return dict(loss=loss, top1=top1, top5=top5)


def _update(state: TrainState, batch: Batch, *, model: nn.Module,
            tx: optax.GradientTransformation, loss_spec: LossSpec,
            axis_name: str | None = None
            ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update; with `axis_name`, on one device's slice."""
  rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:  # Independent dropout masks per device.
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  mutable = ["batch_stats"] if state.batch_stats else False

  def loss_fn(params):
    out = model.apply(variables_of(params, state.batch_stats), batch["image"],
                      train=True, mutable=mutable, rngs={"dropout": rng})
    model_output, new_vars = out if mutable else (out, {})
    outputs = loss_spec.per_example(model_output, batch["label"])
    return outputs["loss"].mean(), (outputs, new_vars.get("batch_stats", {}))

  grads, (outputs, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
    batch_stats = jax.lax.pmean(batch_stats, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params,
                            batch_stats=batch_stats, opt_state=opt_state)
  return new_state, outputs


def train_step(state: TrainState, batch: Batch, *, model: nn.Module,
               tx: optax.GradientTransformation, learning_rate_fn,
               loss_spec: LossSpec = LossSpec(), parallel: str = "jit",
               mesh: Mesh | None = None) -> tuple[TrainState, TrainMetrics]:
  """One step on a global batch; returns the new state and its metrics."""
  update = functools.partial(_update, model=model, tx=tx,
                             loss_spec=loss_spec)
  if parallel == "pmap":
    # check_vma=False gives pmap's semantics: gradients stay per device
    # until the explicit pmean. (With it on, differentiating replicated
    # params against sharded data already psums them: a 4x gradient.)
    update = jax.shard_map(
        functools.partial(update, axis_name=DATA_AXIS), mesh=mesh,
        in_specs=(P(), P(DATA_AXIS)), out_specs=(P(), P(DATA_AXIS)),
        check_vma=False)
  elif parallel != "jit":
    raise ValueError(f"config.parallel must be 'jit' or 'pmap', not {parallel!r}.")
  new_state, outputs = update(state, batch)
  step_metrics = TrainMetrics.single_from_model_output(
      learning_rate=learning_rate_fn(state.step), **outputs)
  return new_state, step_metrics


def eval_step(state: TrainState, batch: Batch, *, model: nn.Module,
              loss_spec: LossSpec = LossSpec()) -> EvalMetrics:
  """Metrics of one padded batch; examples with mask 0 do not count."""
  output = model.apply(state.variables(), batch["image"], train=False)
  return EvalMetrics.single_from_model_output(
      mask=batch["mask"], **loss_spec.per_example(output, batch["label"]))
