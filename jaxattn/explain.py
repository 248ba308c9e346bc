r"""See what a trained model looks at: CAM, Grad-CAM and attention maps.

  python -m jaxattn.explain WORKDIR --images FILE [FILE ...] --out DIR \
      [--method=gradcam|cam|attention|all] [--layer=MODULE/PATH]
  python -m jaxattn.explain WORKDIR --misclassified=8 --out DIR [--split=...]

Writes ``DIR/<image>_<method>.png`` per image and method: the image as the
model saw it | the heat map | the overlay, titled with the predicted class
(and its probability) and the true one (from ``--misclassified``, or from
the folder name when a file lies in ``<class>/<file>``). The map is for the
predicted class.

* ``cam`` (Zhou et al. 2016): for models whose logits are a linear function
  of a global average pool, ``CAM_c(x, y) = sum_k w_kc f_k(x, y)`` with the
  head's weights; averaged over positions, plus the bias, it is the logit.
  slresnet (its three-Linear head has no activations, so it is one linear
  map), gsop_resnet and conv_vit have such heads.
* ``gradcam`` (Selvaraju et al. 2017): any model, at any module whose output
  is spatial (``[N, H, W, C]`` maps or ``[N, 1 + h*w, D]`` tokens):
  ``ReLU(sum_k alpha_k f_k)`` with ``alpha_k`` the spatial mean of the class
  score's gradient. ``--layer`` names the module by its parameter path; the
  default per model is its spec's ``ExplainHooks.gradcam_layer``
  (``jaxattn/models/<family>/__init__.py``).
* ``attention`` (ViTs with token self-attention: vit, hybrid): attention
  rollout (Abnar & Zuidema 2020; heads averaged, identity added for the
  residual, layers multiplied) from the class token to the patches, and a
  row of the last layer's per-head class-token attention.

Nothing in the model code is changed for this: a Flax method interceptor
(``flax.linen.intercept_methods``) captures a module's output and adds a zero
perturbation to it, whose gradient is the gradient with respect to that
output. The attention weights are recomputed from the captured query and key
projections (``softmax(q k^T / sqrt(d))``, which is what both attention
modules compute; a test checks the recomputation against the module).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging

from jaxattn import inference, models
from jaxattn.inference import InputError, Run

METHODS = ("cam", "gradcam", "attention")
_BATCH_SIZE = 32


def architecture(run: Run) -> models.ExplainHooks:
  """Where the run's model is explained: its ``ModelSpec.explain``; a
  module that is not registered gets the defaults (Grad-CAM on its last
  spatial output)."""
  name = run.config.model.name
  if name not in models.known_models():
    return models.ExplainHooks()
  return models.get_spec(name).explain


def supported_methods(run: Run) -> list[str]:
  arch = architecture(run)
  return [m for m, ok in (("cam", arch.cam), ("gradcam", True),
                          ("attention", arch.attention)) if ok]


def check_method(run: Run, method: str) -> None:
  """Raises InputError saying why `method` does not fit and what does."""
  if method not in METHODS:
    raise InputError(f"Unknown method {method!r}; use one of "
                     f"{', '.join(METHODS)} or all.")
  arch, name = architecture(run), run.config.model.name
  reason = {"cam": None if arch.cam else arch.no_cam,
            "attention": None if arch.attention else arch.no_attention
            }.get(method)
  if reason:
    raise InputError(
        f"--method={method} does not apply to model {name!r}: {reason}. Use "
        f"--method={' or --method='.join(supported_methods(run))}.")


# ----------------------------------------------------------------------------
# Module outputs, captured (and perturbed) without touching the model code.
# ----------------------------------------------------------------------------
def _differentiable(model: nn.Module) -> nn.Module:
  """The same model in eval mode with gradients flowing everywhere.

  The hybrid stops gradients at its frozen backbone; at train=False that is
  its only effect, so lifting it leaves outputs unchanged.
  """
  if getattr(model, "freeze_backbone", False):
    return model.clone(freeze_backbone=False)
  return model


def _apply_capturing(model: nn.Module, run: Run, variables, images,
                     layers: Sequence[str], perturbations=None):
  """(logits, {path: output}) with `perturbations[path]` added to outputs.

  A module called more than once is captured at its first call.
  """
  captured = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name != "__call__":
      return out
    path = "/".join(context.module.path)
    if path in layers and path not in captured:
      if perturbations is not None:
        out = out + perturbations[path]
      captured[path] = out
    return out

  with nn.intercept_methods(interceptor):
    output = model.apply(variables, images, train=False)
  return inference.output_logits(output, run.loss_spec), captured


def module_outputs(run: Run, images: np.ndarray
                   ) -> dict[str, jax.ShapeDtypeStruct]:
  """{path: output shape} of every module call, in call order (no compute)."""
  outputs = {}

  def recorder(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    path = "/".join(context.module.path)
    if (context.method_name == "__call__" and path and path not in outputs and
        isinstance(out, jax.Array)):
      outputs[path] = jax.ShapeDtypeStruct(out.shape, out.dtype)
    return out

  with nn.intercept_methods(recorder):
    jax.eval_shape(lambda v, x: run.model.apply(v, x, train=False),
                   run.variables, images)
  return outputs


def token_grid(num_tokens: int, image_size: Sequence[int]
               ) -> tuple[int, int, int] | None:
  """(h, w, leading tokens to skip) of a token sequence, or None.

  A ViT puts its class token first: 1 + h*w tokens whose grid has the
  image's aspect ratio; plain patch tokens have none.
  """
  height, width = image_size
  for skip in (1, 0):
    n = num_tokens - skip
    for h in range(1, n + 1):
      if n % h == 0 and h * width == (n // h) * height:
        return h, n // h, skip
  return None


def is_spatial(shape: Sequence[int], image_size: Sequence[int]) -> bool:
  """[N, h, w, C] with the image's aspect ratio, or [N, tokens, D]."""
  if len(shape) == 4:
    return shape[1] * image_size[1] == shape[2] * image_size[0]
  return len(shape) == 3 and token_grid(shape[1], image_size) is not None


def as_spatial(x: jax.Array, image_size: Sequence[int]) -> jax.Array:
  """[N, h, w, C] view of a map or of tokens (class token dropped)."""
  if x.ndim == 4:
    return x
  h, w, skip = token_grid(x.shape[1], image_size)
  return x[:, skip:].reshape(x.shape[0], h, w, x.shape[-1])


def _format_names(names: Sequence[str], limit: int = 20) -> str:
  shown = sorted(names, key=lambda n: (n.count("/"), list(names).index(n)))
  text = ", ".join(shown[:limit])
  if len(shown) > limit:
    text += f", ... and {len(shown) - limit} more nested modules"
  return text


def resolve_layer(run: Run, layer: str, outputs: dict[str, Any]) -> str:
  """The module path for Grad-CAM: `layer` checked, or the default."""
  size = run.config.image_size
  spatial = [p for p, s in outputs.items() if is_spatial(s.shape, size)]
  name = run.config.model.name
  if not layer:
    pattern = architecture(run).gradcam_layer
    matches = [p for p in spatial if not pattern or re.fullmatch(pattern, p)]
    if not matches:
      raise InputError(f"Model {name!r} has no module with a spatial output "
                       "to explain (it takes no images?).")
    return matches[-1]
  layer = layer.replace(".", "/").strip("/")
  if layer not in outputs:
    raise InputError(
        f"--layer={layer!r} is not a module of model {name!r}. Modules with a "
        f"spatial output: {_format_names(spatial)}.")
  if layer not in spatial:
    raise InputError(
        f"--layer={layer!r} outputs shape {tuple(outputs[layer].shape)}, not a "
        "spatial map [N, H, W, C] or tokens [N, 1 + h*w, D]. Modules with a "
        f"spatial output: {_format_names(spatial)}.")
  return layer


# ----------------------------------------------------------------------------
# The three maps. Each returns raw maps at the feature resolution [N, h, w].
# ----------------------------------------------------------------------------
def grad_cam(run: Run, images: np.ndarray, class_ids: np.ndarray,
             layer: str) -> np.ndarray:
  """ReLU(sum_k alpha_k f_k), alpha_k = mean_xy d score_c / d f_k(x, y)."""
  model = _differentiable(run.model)
  target = module_outputs(run, images)[layer]
  size = run.config.image_size

  @jax.jit
  def compute(variables, images, class_ids):
    def class_score(perturbation):
      logits, captured = _apply_capturing(model, run, variables, images,
                                          [layer], {layer: perturbation})
      score = jnp.take_along_axis(logits, class_ids[:, None], axis=1).sum()
      return score, captured[layer]

    grads, features = jax.grad(class_score, has_aux=True)(
        jnp.zeros(target.shape, target.dtype))
    features = as_spatial(features.astype(jnp.float32), size)
    alphas = as_spatial(grads.astype(jnp.float32), size).mean(axis=(1, 2))
    return jax.nn.relu(jnp.einsum("nhwc,nc->nhw", features, alphas))

  return np.asarray(compute(run.variables, images, class_ids))


def cam_features(run: Run, images: np.ndarray) -> np.ndarray:
  """[N, h, w, C]: the map the global average pool of a CAM head reads."""
  head = architecture(run).cam
  outputs = module_outputs(run, images)
  layer = [p for p in outputs if re.fullmatch(head.features, p)][-1]

  @jax.jit
  def compute(variables, images):
    _, captured = _apply_capturing(run.model, run, variables, images, [layer])
    return head.activation(captured[layer]).astype(jnp.float32)

  return np.asarray(compute(run.variables, images))


def class_activation_map(run: Run, images: np.ndarray,
                         class_ids: np.ndarray) -> np.ndarray:
  """CAM_c(x, y) = sum_k w_kc f_k(x, y); its spatial mean + b_c = logit_c."""
  check_method(run, "cam")
  weight, _ = architecture(run).cam.linear_map(run.variables["params"])
  features = cam_features(run, images)
  return np.einsum("nhwc,cn->nhw", features,
                   np.asarray(weight)[:, np.asarray(class_ids)])


def attention_weights(run: Run, images: np.ndarray) -> list[np.ndarray]:
  """Per layer, in order: [N, heads, tokens, tokens], rows sum to 1."""
  check_method(run, "attention")
  pattern = architecture(run).attention
  outputs = module_outputs(run, images)
  modules = [p for p in outputs if re.fullmatch(pattern, p)]
  layers = [f"{m}/{proj}" for m in modules for proj in ("query", "key")]
  num_heads = run.model.num_heads

  def heads(x):  # Dense [N, T, D] or DenseGeneral [N, T, heads, d].
    return x if x.ndim == 4 else x.reshape(*x.shape[:2], num_heads, -1)

  @jax.jit
  def compute(variables, images):
    _, captured = _apply_capturing(run.model, run, variables, images, layers)
    weights = []
    for m in modules:
      q = heads(captured[f"{m}/query"]).astype(jnp.float32)
      k = heads(captured[f"{m}/key"]).astype(jnp.float32)
      scores = jnp.einsum("nqhd,nkhd->nhqk", q, k) * q.shape[-1]**-0.5
      weights.append(jax.nn.softmax(scores, axis=-1))
    return weights

  return [np.asarray(w) for w in compute(run.variables, images)]


def attention_rollout(weights: Sequence[np.ndarray]) -> np.ndarray:
  """[N, T, T]: heads averaged, 0.5 * (A + I) row-normalised, multiplied
  from the first layer up (the identity stands for the residual stream)."""
  tokens = weights[0].shape[-1]
  rollout = np.broadcast_to(np.eye(tokens), weights[0].shape[:1] +
                            (tokens, tokens))
  for layer in weights:
    a = 0.5 * layer.mean(axis=1) + 0.5 * np.eye(tokens)
    a = a / a.sum(axis=-1, keepdims=True)
    rollout = a @ rollout
  return rollout


def attention_maps(run: Run, images: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
  """(rollout [N, h, w], last layer per head [N, heads, h, w]): what the
  class token attends to (without one: the attention each patch receives)."""
  weights = attention_weights(run, images)
  h, w, skip = token_grid(weights[0].shape[-1], run.config.image_size)

  def from_query(a):  # [..., T, T] -> [..., h, w]
    received = a[..., 0, skip:] if skip else a.mean(axis=-2)
    return received.reshape(*a.shape[:-2], h, w)

  return from_query(attention_rollout(weights)), from_query(weights[-1])


def to_heatmaps(maps: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
  """[..., h, w] -> [..., H, W] (bilinear), min-max scaled to [0, 1] per map.

  Min-max as Zhou et al. show CAMs: a rollout or a Grad-CAM is positive
  almost everywhere, and scaling by the maximum alone would paint it warm.
  """
  maps = np.asarray(maps, np.float32)
  resized = np.asarray(jax.image.resize(
      maps, (*maps.shape[:-2], *image_size), "bilinear"))
  low = resized.min(axis=(-2, -1), keepdims=True)
  span = resized.max(axis=(-2, -1), keepdims=True) - low
  return np.where(span > 0, (resized - low) / np.maximum(span, 1e-12), 0.0)


# ----------------------------------------------------------------------------
# Inputs, and the command.
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class Inputs:
  images: np.ndarray  # Preprocessed as for the model.
  labels: list[int | None]  # True class where known.
  names: list[str]  # Output file stems.


def inputs_from_files(run: Run, files: Sequence[str]) -> Inputs:
  images = inference.read_images(files, run.config)
  labels = [inference.label_from_path(f, run.config.class_names)
            for f in files]
  stems, names = set(), []
  for i, path in enumerate(files):
    stem = os.path.splitext(os.path.basename(path))[0]
    names.append(stem if stem not in stems else f"{stem}_{i}")
    stems.add(names[-1])
  return Inputs(images, labels, names)


def find_misclassified(run: Run, split: str, count: int) -> Inputs:
  """The first `count` misclassified examples of `split`, in split order."""
  from jaxattn import data, experiment  # pylint: disable=g-import-not-at-top
  # No tf.data cache: the search stops early, and a half-read cache is
  # discarded with a warning.
  config = ml_collections.ConfigDict(run.config.to_dict())
  config.cache = False
  try:
    source = experiment.get_source(config)
    ds, _ = data.pipeline.create_eval_dataset(
        source, split, config, shard=data.ProcessShard(
            0, 1, config.eval_batch_size))
  except data.MissingDataExtra as e:
    raise InputError(f"--misclassified reads the dataset: {e}") from None
  except data.DatasetError as e:
    raise InputError(f"--split={split!r}: {e}") from None
  predict = inference.make_predict_fn(run)
  safe_split = "".join(c if c.isalnum() else "_" for c in split).strip("_")
  found = Inputs([], [], [])
  position = 0
  for batch in data.pipeline.as_numpy(ds):
    predictions = predict(batch["image"]).argmax(axis=-1)
    for i in np.flatnonzero(batch["mask"] > 0):
      if predictions[i] != batch["label"][i] and len(found.names) < count:
        found.images.append(batch["image"][i])
        found.labels.append(int(batch["label"][i]))
        found.names.append(f"{safe_split}_{position + i:05d}")
    position += int((batch["mask"] > 0).sum())
    if len(found.names) >= count:
      break
  if len(found.names) < count:
    logging.warning("Only %d misclassified images in %s.", len(found.names),
                    split)
  found.images = (np.stack(found.images) if found.images else
                  np.zeros((0, *config.image_size, config.num_channels)))
  return found


def _title(names: Sequence[str], predicted: int, probability: float,
           label: int | None) -> str:
  truth = "?" if label is None else names[label]
  verdict = "" if label is None else ("  (right)" if label == predicted
                                      else "  (WRONG)")
  return (f"predicted {names[predicted]} ({probability:.1%})   true {truth}"
          f"{verdict}")


def _method_maps(run: Run, method: str, images: np.ndarray,
                 class_ids: np.ndarray, layer_path: str):
  """(raw maps, raw per-head maps or None, map title, figure subtitle)."""
  if method == "gradcam":
    return (grad_cam(run, images, class_ids, layer_path), None, "Grad-CAM",
            f"Grad-CAM at {layer_path}")
  if method == "cam":
    return (class_activation_map(run, images, class_ids), None, "CAM",
            "CAM: pooled features x head weights")
  rollout, per_head = attention_maps(run, images)
  return (rollout, per_head, "attention rollout", "attention rollout from "
          "the class token; below: each head of the last layer")


def explain(workdir: str, *, images: Sequence[str] = (),
            misclassified: int = 0, out_dir: str, method: str = "gradcam",
            layer: str = "", split: str = "", checkpoint: str = "best"
            ) -> list[str]:
  """Writes one overlay PNG per image and method; returns their paths."""
  from jaxattn import plots  # pylint: disable=g-import-not-at-top
  if not images and not misclassified:
    raise InputError("Nothing to explain: pass --images FILE [FILE ...] "
                     "and/or --misclassified=N.")
  run = inference.load_run(workdir, checkpoint)
  methods = supported_methods(run) if method == "all" else [method]
  for m in methods:
    check_method(run, m)
  if layer and "gradcam" not in methods:
    raise InputError(f"--layer chooses the Grad-CAM layer; add "
                     f"--method=gradcam (got --method={method}).")
  inputs = Inputs(np.zeros((0, *run.config.image_size,
                            run.config.num_channels), np.float32), [], [])
  if images:
    inputs = inputs_from_files(run, images)
  if misclassified:
    split = split or run.config.val_split or run.config.test_split
    wrong = find_misclassified(run, split, misclassified)
    inputs = Inputs(np.concatenate([inputs.images, wrong.images]),
                    inputs.labels + wrong.labels, inputs.names + wrong.names)
  if not inputs.names:
    return []

  names = run.class_names
  size = tuple(run.config.image_size)
  probs = inference.make_predict_fn(run)(inputs.images)
  predicted = probs.argmax(axis=-1)
  display = inference.to_display(inputs.images, run.config)
  layer_path = (resolve_layer(run, layer, module_outputs(
      run, inputs.images[:1])) if "gradcam" in methods else "")
  written = []
  for m in methods:
    for batch in inference.in_batches(len(inputs.names), _BATCH_SIZE):
      x, ids = inputs.images[batch], predicted[batch]
      raw, per_head, map_title, detail = _method_maps(run, m, x, ids,
                                                      layer_path)
      if raw.shape[-2:] == (1, 1):
        detail += " (a 1x1 map: nothing to localise)"
        if batch.start == 0:
          logging.warning(
              "%s: the map is 1x1 at %s px, so it cannot show where; use an "
              "earlier --layer with --method=gradcam, or larger images.", m,
              size)
      maps = to_heatmaps(raw, size)
      head_maps = None if per_head is None else to_heatmaps(per_head, size)
      head_titles = [] if per_head is None else [
          f"head {h}" for h in range(per_head.shape[1])]
      for i, n in enumerate(range(len(inputs.names))[batch]):
        fig = plots.explanation_figure(
            display[n], maps[i], map_title=map_title,
            title=_title(names, int(predicted[n]), float(probs[n].max()),
                         inputs.labels[n]) + f"\n{detail}",
            head_maps=None if head_maps is None else head_maps[i],
            head_titles=head_titles)
        written.append(plots.save_png(
            fig, os.path.join(out_dir, f"{inputs.names[n]}_{m}.png")))
  logging.info("Wrote %d overlays to %s.", len(written), out_dir)
  return written


def define_flags() -> None:
  """The command's flags; defined only when it runs, so that importing this
  module beside other absl programs (main.py) defines no flags."""
  flags.DEFINE_list(
      "images", [], "Image files (also comma-separated; further file names "
      "after the workdir are taken too, so --images dir/*.png works).")
  flags.DEFINE_enum("method", "gradcam", [*METHODS, "all"],
                    "cam, gradcam, attention, or all that apply to the model.")
  flags.DEFINE_string(
      "layer", "", "Grad-CAM module path, e.g. layer4_2 or "
      "transformer_encoder_3/layer_norm (default: per architecture).")
  flags.DEFINE_string("out", None, "Directory for the PNGs.")
  flags.DEFINE_integer(
      "misclassified", 0, "Also explain the first N misclassified images of "
      "--split.")
  flags.DEFINE_string("split", "", "Split for --misclassified (default: the "
                      "validation split, else test).")
  flags.DEFINE_string(
      "checkpoint", "best", "best (the latest if the run kept no best), "
      "latest or a step number.")


def main(argv):
  inference.start_command(argv, "python -m jaxattn.explain WORKDIR --images "
                          "FILE [FILE ...] --out DIR [--method=...]")
  args = flags.FLAGS
  if not args.out:
    raise app.UsageError("--out DIR is required.")
  # Bad input (InputError) ends the command as one line (jaxattn.console).
  paths = explain(argv[1], images=[*args.images, *argv[2:]],
                  misclassified=args.misclassified, out_dir=args.out,
                  method=args.method, layer=args.layer, split=args.split,
                  checkpoint=args.checkpoint)
  print("\n".join(paths))


if __name__ == "__main__":
  from jaxattn import console  # pylint: disable=g-import-not-at-top
  jax.config.config_with_absl()  # --jax_num_cpu_devices=N etc.
  define_flags()
  console.run(main)  # app.run, with --library_logs and --traceback.
