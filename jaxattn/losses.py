"""How model outputs become a loss, and the logits that metrics score.

Shared by the train and eval steps, the plots and inference; each model's
interface (``jaxattn.models.interface``) says which spec its outputs need.
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jaxattn.configlib import ConfigError


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

  def per_example(self, model_output, labels: jax.Array,
                  targets: jax.Array | None = None) -> dict[str, jax.Array]:
    """Per-example loss and top-1/top-5 hits; ``targets`` (soft, e.g. from
    Mixup) replace the label-smoothed one-hots in the loss."""
    if not isinstance(model_output, dict):
      return per_example_outputs(self.as_logits(model_output), labels,
                                 self.label_smoothing, targets)
    missing = [k for k, _ in self.output_weights if k not in model_output]
    if missing or self.metric_output not in model_output:
      raise ConfigError(
          f"The model returns outputs {sorted(model_output)}; "
          f"config.loss_weights names {[k for k, _ in self.output_weights]} "
          f"and config.metric_output is {self.metric_output!r}.")
    result = per_example_outputs(self.as_logits(model_output[
        self.metric_output]), labels, self.label_smoothing, targets)
    result["loss"] = sum(
        weight * per_example_outputs(self.as_logits(model_output[name]),
                                     labels, self.label_smoothing,
                                     targets)["loss"]
        for name, weight in self.output_weights)
    return result


def per_example_outputs(logits: jax.Array, labels: jax.Array,
                        label_smoothing: float = 0.0,
                        targets: jax.Array | None = None
                        ) -> dict[str, jax.Array]:
  """Cross-entropy and top-1/top-5 hits (against ``labels``) per example."""
  logits = logits.astype(jnp.float32)
  num_classes = logits.shape[-1]
  if targets is None:
    targets = jax.nn.one_hot(labels, num_classes)
    if label_smoothing:
      targets = optax.smooth_labels(targets, label_smoothing)
  loss = optax.softmax_cross_entropy(logits, targets)
  top1 = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  k = min(5, num_classes)
  _, top_k = jax.lax.top_k(logits, k)
  top5 = jnp.any(top_k == labels[:, None], axis=-1).astype(jnp.float32)
  return dict(loss=loss, top1=top1, top5=top5)
