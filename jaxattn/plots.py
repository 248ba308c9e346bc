"""Pictures of a run: training curves, confusion matrices, heat-map overlays.

Everything draws on matplotlib ``Figure`` objects with the Agg canvas and
never touches ``pyplot``: no global figure state, no GUI backend, safe in
training processes and threads.

``write_run_report`` is what training calls once at the end (and
``evaluate_checkpoint`` the same way): it writes ``curves.png`` (loss,
accuracy and learning rate against the step, read back from the run's
TensorBoard event files) and a confusion matrix PNG into the workdir, and
the same two pictures as TensorBoard image summaries.
"""

from __future__ import annotations

import functools
import glob
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxattn import data, losses, parallel
from jaxattn.configlib import ConfigError

CURVES_FILE = "curves.png"
CONFUSION_FILE = "confusion_matrix.png"
DPI = 100
# One heat-map panel, in inches (times DPI: pixels).
PANEL_INCHES = 2.4
# Two title lines above the panels' own titles.
_TITLE_INCHES = 0.85
_HEADS_PER_ROW = 6

# The CLU scalars each curve panel draws: (panel title, [(tag, label)]).
_CURVE_PANELS = (
    ("loss", (("train_loss", "train"), ("val_loss", "validation"))),
    ("top-1 accuracy", (("train_accuracy", "train"),
                        ("val_accuracy", "validation"))),
    ("learning rate", (("train_learning_rate", "learning rate"),)),
)


def new_figure(width_inches: float, height_inches: float) -> Figure:
  fig = Figure(figsize=(width_inches, height_inches), dpi=DPI)
  FigureCanvasAgg(fig)
  return fig


def save_png(fig: Figure, path: str) -> str:
  """Writes the figure at exactly figsize * DPI pixels (no tight bbox)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=DPI, format="png")
  return path


def to_rgb_array(fig: Figure) -> np.ndarray:
  """uint8 [H, W, 3] pixels of the figure, for TensorBoard."""
  fig.canvas.draw()
  return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


# ----------------------------------------------------------------------------
# Heat-map overlays.
# ----------------------------------------------------------------------------
def explanation_size(num_head_maps: int = 0) -> tuple[int, int]:
  """(width, height) in pixels of `explanation_figure`'s PNG."""
  columns = max(3, min(num_head_maps, _HEADS_PER_ROW))
  rows = 1 + -(-num_head_maps // _HEADS_PER_ROW)
  return (round(columns * PANEL_INCHES * DPI),
          round((rows * PANEL_INCHES + _TITLE_INCHES) * DPI))


def explanation_figure(image: np.ndarray, heatmap: np.ndarray, *, title: str,
                       map_title: str,
                       head_maps: np.ndarray | None = None,
                       head_titles: Sequence[str] = ()) -> Figure:
  """Image | heat map | overlay; optional rows of smaller maps (per head).

  `image` is [H, W, C] in [0, 1] (C = 1 or 3), `heatmap` [H, W] in [0, 1],
  `head_maps` [K, H, W] in [0, 1].
  """
  num_heads = 0 if head_maps is None else len(head_maps)
  width, height = explanation_size(num_heads)
  fig = new_figure(width / DPI, height / DPI)
  columns = width // round(PANEL_INCHES * DPI)
  rows = 1 + -(-num_heads // _HEADS_PER_ROW)
  top = 1 - _TITLE_INCHES / (height / DPI)
  grid = fig.add_gridspec(rows, columns, left=0.02, right=0.98, bottom=0.02,
                          top=top, wspace=0.08, hspace=0.25)
  fig.suptitle(title, fontsize=10, y=1 - 0.06 / (height / DPI), va="top")
  gray = image.shape[-1] == 1
  shown = image[..., 0] if gray else image
  panels = [("image", shown, dict(cmap="gray" if gray else None)),
            (map_title, heatmap, dict(cmap="jet", vmin=0, vmax=1))]
  for i, (name, data, style) in enumerate(panels):
    ax = fig.add_subplot(grid[0, i])
    ax.imshow(data, interpolation="nearest", **style)
    ax.set_title(name, fontsize=9)
    ax.axis("off")
  ax = fig.add_subplot(grid[0, 2])
  ax.imshow(shown, cmap="gray" if gray else None, interpolation="nearest")
  ax.imshow(heatmap, cmap="jet", alpha=0.5, vmin=0, vmax=1,
            interpolation="bilinear")
  ax.set_title("overlay", fontsize=9)
  ax.axis("off")
  for k in range(num_heads):
    ax = fig.add_subplot(grid[1 + k // _HEADS_PER_ROW, k % _HEADS_PER_ROW])
    ax.imshow(shown, cmap="gray" if gray else None, interpolation="nearest")
    ax.imshow(head_maps[k], cmap="jet", alpha=0.5, vmin=0, vmax=1,
              interpolation="bilinear")
    ax.set_title(head_titles[k] if k < len(head_titles) else f"head {k}",
                 fontsize=8)
    ax.axis("off")
  return fig


# ----------------------------------------------------------------------------
# Training curves from the TensorBoard event files.
# ----------------------------------------------------------------------------
def read_scalars(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{tag: (steps, values)} of every scalar in the workdir's event files.

  A resumed run logs some steps twice (those after its last checkpoint);
  the later write wins, as it belongs to the run that went on.
  """
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  # tag -> step -> (wall time, value): the latest write of a step wins,
  # whichever file (one per run or resumption) holds it.
  by_tag: dict[str, dict[int, tuple[float, float]]] = {}

  def keep(tag, event, value):
    steps_ = by_tag.setdefault(tag, {})
    if event.step not in steps_ or steps_[event.step][0] <= event.wall_time:
      steps_[event.step] = (event.wall_time, value)

  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    events = event_accumulator.EventAccumulator(
        path, size_guidance={event_accumulator.TENSORS: 0,
                             event_accumulator.SCALARS: 0},
        purge_orphaned_data=False)
    events.Reload()
    tags = events.Tags()
    for tag in tags.get(event_accumulator.TENSORS, []):
      for event in events.Tensors(tag):
        value = tensor_util.make_ndarray(event.tensor_proto)
        if value.size == 1 and np.issubdtype(value.dtype, np.number):
          keep(tag, event, float(value))
    for tag in tags.get(event_accumulator.SCALARS, []):
      for event in events.Scalars(tag):
        keep(tag, event, float(event.value))
  return {tag: (np.array(sorted(v)), np.array([v[s][1] for s in sorted(v)]))
          for tag, v in by_tag.items()}


class ReferenceCurve(NamedTuple):
  """A published per-epoch curve, placed at each epoch's last step."""

  label: str
  tag: str  # The scalar it compares with, e.g. "val_accuracy".
  steps: np.ndarray
  values: np.ndarray


def reference_curve(config, steps_per_epoch: int) -> ReferenceCurve | None:
  """config.reference_curve at epoch e's last step, e * steps_per_epoch."""
  ref = config.get("reference_curve")
  if ref is None or not ref.get("per_epoch"):
    return None
  tags = {tag for _, series in _CURVE_PANELS for tag, _ in series}
  if ref.tag not in tags:
    raise ConfigError(f"config.reference_curve.tag={ref.tag!r} is not a "
                      f"plotted curve; use one of {sorted(tags)}.")
  values = np.asarray(ref.per_epoch, np.float64)
  steps = np.arange(1, len(values) + 1) * steps_per_epoch
  return ReferenceCurve(ref.label or "reference", ref.tag, steps, values)


def curves_figure(scalars: dict[str, tuple[np.ndarray, np.ndarray]], *,
                  title: str = "", mark_step: int | None = None,
                  reference: ReferenceCurve | None = None) -> Figure:
  """Loss, top-1 accuracy and learning rate against the step.

  `mark_step` draws a dashed line at that step (the checkpoint evaluated)
  when it is not the last one logged. `reference`, a published curve, is
  drawn in the panel that holds its tag.
  """
  fig = new_figure(12, 3.6)
  axes = fig.subplots(1, len(_CURVE_PANELS))
  last_step = max((int(s[-1]) for s, _ in scalars.values()), default=0)
  marked = mark_step is not None and mark_step < last_step
  for ax, (name, series) in zip(axes, _CURVE_PANELS):
    drawn = False
    for tag, label in series:
      if tag in scalars:
        steps_, values = scalars[tag]
        ax.plot(steps_, values, marker="o" if len(steps_) < 30 else None,
                markersize=3, label=label)
        drawn = True
    if reference is not None and reference.tag in dict(series):
      ax.plot(reference.steps, reference.values, color="black",
              linestyle=":", marker="x", markersize=3, label=reference.label)
      drawn = True
    if marked:
      ax.axvline(mark_step, color="gray", linestyle="--", linewidth=1,
                 label=f"step {mark_step}")
    ax.set_title(name)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if drawn and (len(series) > 1 or marked or reference is not None):
      ax.legend(fontsize=8)
    if not drawn:
      ax.text(0.5, 0.5, "not logged", ha="center", va="center",
              transform=ax.transAxes)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return fig


# ----------------------------------------------------------------------------
# Confusion matrix.
# ----------------------------------------------------------------------------
def _confusion_step(variables, batch, *, apply, loss_spec: losses.LossSpec,
                    num_rows: int) -> jax.Array:
  """[num_rows, num_rows + 1] counts of (label, prediction) in one batch.

  Predictions of outputs beyond the dataset's classes (seed 001 keeps 1000
  logits for 10 classes) land in the last column; padding has mask 0.
  """
  output = apply(variables, batch["image"])
  if isinstance(output, dict):
    output = output[loss_spec.metric_output]
  predictions = jnp.minimum(jnp.argmax(loss_spec.as_logits(output), -1),
                            num_rows)
  counts = jnp.zeros((num_rows, num_rows + 1), jnp.int32)
  return counts.at[batch["label"], predictions].add(
      batch["mask"].astype(jnp.int32))


def confusion_counts(exp, variables, split: str) -> np.ndarray:
  """[classes, classes + 1] counts over every example of `split` once.

  Rows are true classes, columns predicted ones (+ "other"). Every process
  runs it: the batch is sharded over the experiment's mesh like
  evaluation's, the counts come back replicated.
  """
  config = exp.config
  num_rows = len(config.class_names) or config.num_classes
  count = jax.jit(functools.partial(
      _confusion_step, apply=exp.apply, loss_spec=exp.loss_spec,
      num_rows=num_rows), out_shardings=parallel.replicated(exp.mesh))
  ds, _ = exp.eval_dataset(split)
  total = np.zeros((num_rows, num_rows + 1), np.int64)
  for batch in data.pipeline.as_numpy(ds):
    counts = count(variables, parallel.global_batch(batch, exp.batch_sharding))
    # Replicated: every process holds the whole sum locally.
    total += np.asarray(counts.addressable_data(0))
  return total


def confusion_figure(counts: np.ndarray, class_names: Sequence[str], *,
                     title: str = "") -> Figure:
  """Counts annotated, colour = fraction of the true class (row)."""
  num = counts.shape[0]
  if counts.shape[1] > num and not counts[:, num:].any():
    counts = counts[:, :num]  # No prediction outside the dataset's classes.
  column_names = list(class_names)[:num] + ["other"] * (counts.shape[1] - num)
  row_totals = np.maximum(counts.sum(axis=1, keepdims=True), 1)
  fractions = counts / row_totals
  side = min(14.0, max(5.0, 0.45 * counts.shape[1] + 2.5))
  fig = new_figure(side + 1.0, side)
  ax = fig.add_subplot()
  image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1,
                    interpolation="nearest")
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
               label="fraction of the true class")
  if counts.shape[1] <= 40:
    ax.set_xticks(range(counts.shape[1]), column_names, rotation=90,
                  fontsize=8)
    ax.set_yticks(range(num), list(class_names)[:num], fontsize=8)
  if counts.shape[1] <= 20:
    for (i, j), n in np.ndenumerate(counts):
      if n:
        ax.text(j, i, str(n), ha="center", va="center", fontsize=7,
                color="white" if fractions[i, j] > 0.5 else "black")
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  total = counts.sum()
  accuracy = np.trace(counts[:, :num]) / max(total, 1)
  summary = f"{total} images, top-1 accuracy {accuracy:.2%}"
  ax.set_title(f"{title}\n{summary}" if title else summary, fontsize=10)
  fig.tight_layout()
  return fig


# ----------------------------------------------------------------------------
# What training and evaluation call.
# ----------------------------------------------------------------------------
def write_run_report(exp, workdir: str, variables: Any, writer: Any,
                     step: int, *, split: str | None = None,
                     confusion_file: str = CONFUSION_FILE,
                     image_prefix: str = "") -> dict[str, str]:
  """Writes curves and a confusion matrix (PNG + TensorBoard images).

  Call on every process (the confusion matrix is a sharded computation); only
  process 0 writes files. `split` defaults to the test split, else the
  validation split; without either only the curves are drawn. `writer` may
  be None (no TensorBoard images); the images are tagged `image_prefix` +
  "curves" / "confusion_matrix". Returns {"curves": path, "confusion": path}
  of what was written.
  """
  config = exp.config
  if split is None:
    split = config.test_split or config.val_split
  counts = confusion_counts(exp, variables, split) if split else None
  if jax.process_index() != 0:
    return {}
  written, images = {}, {}
  if writer is not None:
    writer.flush()  # The curves are read back from the event files.
  scalars = read_scalars(workdir)
  if scalars:
    fig = curves_figure(scalars, title=f"{config.model.name} on "
                        f"{config.dataset}", mark_step=step,
                        reference=reference_curve(config,
                                                  exp.steps_per_epoch))
    written["curves"] = save_png(fig, os.path.join(workdir, CURVES_FILE))
    images["curves"] = to_rgb_array(fig)
  else:
    logging.warning("No TensorBoard scalars in %s: %s not written.", workdir,
                    CURVES_FILE)
  if counts is not None:
    fig = confusion_figure(counts, config.class_names,
                           title=f"{split} at step {step}")
    written["confusion"] = save_png(fig, os.path.join(workdir, confusion_file))
    images["confusion_matrix"] = to_rgb_array(fig)
  if writer is not None and images:
    writer.write_images(step, {image_prefix + k: v[None]
                               for k, v in images.items()})
    writer.flush()
  logging.info("Run report: %s", written)
  return written
