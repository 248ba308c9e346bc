r"""Measure a config's train step, eval step or input pipeline.

  python -m jaxattn.bench --config=configs/cifar10_convvit.py \
      --config.compute_dtype=float32 [--batch=128] [--steps=20] [--json=FILE]
  python -m jaxattn.bench --mode=pipeline --config=configs/cifar10_convvit.py \
      --config.dataset=folder:/tmp/cifar [--steps=100] [--json=FILE]

``--mode=train`` (default) builds the config's model, optimizer and the very
train step that ``main.py`` runs (same jit, shardings and donation), feeds it
one synthetic batch of the config's shape (random normalised images; the
backbone logits for seed 000's feature-cached head), and reports:

* ``lower_s`` and ``compile_s``: tracing + lowering, then XLA compilation
  (ahead of time, ``.lower().compile()``), so the timed steps compile nothing;
* ``train_images_per_s``: batch / median step time of ``--steps`` steps after
  ``--warmup`` steps (and ``train_images_per_s_best`` from the fastest one);
* ``eval_images_per_s``: the same for the eval step at ``eval_batch_size``;
* ``train_flops_per_image`` / ``eval_flops_per_image`` from XLA's cost
  analysis of the compiled programs (a train step is forward, backward and
  optimizer update), and the achieved ``train_flops_per_s``. These are the
  model's FLOPs: under the CPU kernels (``kernels``, "cpu" or "plain") they
  are counted on the same step compiled with the plain ops, since XLA counts
  a loop body (conv_vit's chunks) only once;
* ``host_matmul_flops_per_s_{float32,bfloat16}``: the host's measured matmul
  peak (one 2048^3 matmul per device at once, best of 5), and
  ``train_fraction_of_matmul_peak``: the step's achieved FLOP/s over the peak
  of its compute dtype, i.e. how much of what the machine can do it uses
  (``--nopeak`` skips this);
* ``peak_rss_mib``: the process's peak resident host memory.

``--mode=pipeline`` times the real tf.data training input of the config
(decoding, augmentation, batching; no model): ``pipeline_images_per_s`` over
``--steps`` batches after ``--warmup`` batches. The first epoch decodes
every image; later ones read the decoded cache (``config.cache``): pass
``--warmup`` of at least one epoch of batches to time the cached state.

The host syncs (``block_until_ready``) only at timing boundaries. Every
figure is printed and, with ``--json``, written as one JSON object.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from absl import app, flags
from ml_collections import config_flags


def define_flags() -> None:
  """The command's flags; defined only when it runs, so that importing this
  module beside other absl programs (main.py, summary, tests) defines none."""
  from jaxattn import configlib  # pylint: disable=g-import-not-at-top
  configlib.define_config_flag()
  flags.DEFINE_enum(
      "mode", "train", ["train", "pipeline"],
      "train: the train and eval steps on synthetic data; pipeline: the tf.data "
      "training input alone, on the config's dataset.")
  flags.DEFINE_integer(
      "batch", 0, "Global batch size; 0 for config.batch_size.")
  flags.DEFINE_integer(
      "eval_batch", 0, "Eval batch size; 0 for config.eval_batch_size.")
  flags.DEFINE_integer(
      "steps", 20, "Timed steps (train mode) or batches (pipeline mode).")
  flags.DEFINE_integer(
      "eval_steps", 10, "Timed eval steps; 0 skips the eval step.")
  flags.DEFINE_integer(
      "warmup", 3, "Untimed steps (or batches) before timing.")
  flags.DEFINE_string("json", "", "Also write the results to this file.")
  flags.DEFINE_string(
      "profile_dir", "", "Write a jax.profiler trace of a few extra train steps "
      "here (open with TensorBoard's profile plugin or Perfetto).")
  flags.DEFINE_string(
      "hlo_file", "", "Write the compiled train step's optimized HLO here.")
  flags.DEFINE_bool(
      "peak", True, "Train mode: also measure the host's fp32 and bf16 matmul "
      "peak (a few seconds) and report the step's FLOP/s as a fraction of it.")
  flags.DEFINE_integer("peak_size", 2048, "Side of the square matmuls that "
                       "measure the peak.")
  flags.DEFINE_bool("allow_cpu", False, "Train mode: time the steps on the "
                    "CPU although an accelerator plugin is installed (without "
                    "it the command stops and says why).")


# ----------------------------------------------------------------------------
# Shared helpers.
# ----------------------------------------------------------------------------
def machine() -> dict[str, Any]:
  """What the numbers were measured on."""
  import jax  # pylint: disable=g-import-not-at-top
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f
                  if line.startswith("model name")), cpu)
  except OSError:
    pass
  return dict(cpu=cpu, cpu_count=os.cpu_count(),
              platform=jax.default_backend(),
              device_kind=jax.devices()[0].device_kind,
              device_count=jax.device_count(), jax_version=jax.__version__,
              xla_flags=os.environ.get("XLA_FLAGS", ""))


def peak_rss_mib() -> float:
  """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / (2**20 if sys.platform == "darwin" else 2**10)


def matmul_peak(dtype: str = "float32", size: int = 2048,
                repeats: int = 5) -> float:
  """The host's measured matmul FLOP/s in ``dtype``: the physical limit.

  One ``size``^3 matmul per local device, all at once (each CPU device is a
  core under the CPU defaults), best of ``repeats`` after a warm-up; the
  figure that a step's achieved FLOP/s is a fraction of.
  """
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import numpy as np
  # pylint: enable=g-import-not-at-top
  matmul = jax.jit(lambda a, b: jnp.matmul(a, b,
                                           preferred_element_type=jnp.float32))
  rng = np.random.default_rng(0)
  a = rng.standard_normal((size, size)).astype(np.float32)
  operands = [(jax.device_put(jnp.asarray(a, dtype), d),
               jax.device_put(jnp.asarray(a.T, dtype), d))
              for d in jax.local_devices()]
  def run_all():
    jax.block_until_ready([matmul(x, y) for x, y in operands])
  run_all()
  best = min(time_calls(run_all, repeats))
  return 2.0 * size**3 * len(operands) / best


def _median_and_best(seconds: list[float]) -> tuple[float, float]:
  return statistics.median(seconds), min(seconds)


def time_calls(step_fn: Callable[[], None], num_calls: int) -> list[float]:
  """Wall time of each call; ``step_fn`` waits for its own outputs."""
  seconds = []
  for _ in range(num_calls):
    start = time.perf_counter()
    step_fn()
    seconds.append(time.perf_counter() - start)
  return seconds


def _flops(compiled, num_devices: int) -> float:
  """FLOPs of one call of a compiled program over all devices (0: unknown).

  XLA analyses the partitioned program that each device runs.
  """
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older jax: one dict per program.
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", 0.0)) * num_devices


# ----------------------------------------------------------------------------
# Train and eval steps.
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class CompiledStep:
  """One compiled step bound to its state and a synthetic batch.

  ``run()`` executes one step and waits for its outputs; the train step
  carries its (donated) state from call to call.
  """

  batch_size: int
  lower_s: float
  compile_s: float
  # FLOPs per call from XLA's cost analysis (0 when unknown), counted on
  # first use: read it after timing, since it may compile another program.
  count_flops: Callable[[], float]
  run: Callable[[], None]
  hlo_text: Callable[[], str]

  @functools.cached_property
  def flops(self) -> float:
    return self.count_flops()


@dataclasses.dataclass
class Steps:
  """The config's train step (and eval step) ready to time."""

  config: Any  # Resolved (classes and channels filled in).
  num_params: int
  example_shape: tuple[int, ...]
  train: CompiledStep
  eval: CompiledStep | None
  mesh_devices: int  # Devices the steps run on (a CPU host may use fewer).
  kernels: str  # "plain" or "cpu" (jaxattn/models/kernels.py).


def build_steps(config, *, batch_size: int, eval_batch_size: int = 0
                ) -> Steps:
  """Compiles the config's train step as train.py does, on synthetic data.

  The same ``Experiment`` as ``train.train_and_evaluate`` (model, optimizer,
  schedule, loss, jit shardings and state donation) built from the
  dataset's metadata; the batch is random data of the train step's input
  shape (seed 000's cached head: backbone logits). ``eval_batch_size=0``
  skips the eval step.
  """
  # pylint: disable=g-import-not-at-top
  import jax
  import ml_collections
  from jaxattn import experiment
  from jaxattn.models import kernels
  # pylint: enable=g-import-not-at-top

  config = ml_collections.ConfigDict(config.to_dict())
  config.batch_size = batch_size
  config.eval_batch_size = eval_batch_size or config.eval_batch_size
  config.init_from = ""  # Timing needs no pretrained weights.
  config.pretrained_required = False
  # The mesh training gets: on a CPU host, the device count measured fastest
  # for this model (probed once, then cached; jaxattn/cpu_layout.py).
  exp = experiment.Experiment(config, data="metadata", probe_layout=True)
  exp.shard  # pylint: disable=pointless-statement  # Checks the batch size.
  if eval_batch_size:
    exp.eval_shard  # pylint: disable=pointless-statement
  if config.cache_backbone_features:
    exp = exp.with_features(None)
  config, shape = exp.config, exp.input_shape
  state = exp.init_state()

  def compile_step(fn, *args):
    start = time.perf_counter()
    lowered = fn.lower(*args)
    lower_seconds = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    return compiled, lower_seconds, time.perf_counter() - start

  batch = exp.synthetic_batch(batch_size)
  train_compiled, lower_s, compile_s = compile_step(exp.train_fn, state, batch)
  current = {"state": state}
  del state  # Donated by the first step: only `current` may hold it.

  def train_once():
    current["state"], _ = train_compiled(current["state"], batch)
    jax.block_until_ready(current["state"])

  def train_flops():
    if not exp.kernels.cpu:
      return _flops(train_compiled, exp.mesh.size)
    # The model's FLOPs are those of its plain ops: XLA's cost analysis
    # counts a loop body once (conv_vit's chunks) and would not count the
    # CPU kernels' recomputation as the model's.
    flops_fn = exp.make_train_fn(donate=False, step_kernels=kernels.Kernels(
        "plain", exp.kernels.platform))
    return _flops(flops_fn.lower(current["state"], batch).compile(),
                  exp.mesh.size)

  train_step = CompiledStep(batch_size, lower_s, compile_s, train_flops,
                            train_once, train_compiled.as_text)
  eval_step = None
  if eval_batch_size:
    eval_batch = exp.synthetic_batch(eval_batch_size, with_mask=True, seed=1)
    eval_compiled, eval_lower_s, eval_compile_s = compile_step(
        exp.eval_fn, current["state"], eval_batch)

    def eval_once():
      jax.block_until_ready(eval_compiled(current["state"], eval_batch))

    eval_step = CompiledStep(eval_batch_size, eval_lower_s, eval_compile_s,
                             lambda: _flops(eval_compiled, exp.mesh.size),
                             eval_once, eval_compiled.as_text)
  return Steps(config=config, num_params=exp.num_params(),
               mesh_devices=exp.mesh.size, kernels=exp.kernels.name,
               example_shape=tuple(shape), train=train_step, eval=eval_step)


def bench_steps(config, *, batch_size: int, eval_batch_size: int,
                num_steps: int, num_eval_steps: int, warmup: int,
                profile_dir: str = "", hlo_file: str = "") -> dict[str, Any]:
  """Compiles and times the config's train (and eval) step; see the module doc."""
  import jax  # pylint: disable=g-import-not-at-top
  built = build_steps(config, batch_size=batch_size,
                      eval_batch_size=eval_batch_size if num_eval_steps else 0)
  config, train_step = built.config, built.train
  if hlo_file:
    with open(hlo_file, "w") as f:
      f.write(train_step.hlo_text())
  time_calls(train_step.run, warmup)
  seconds, best = _median_and_best(time_calls(train_step.run, num_steps))
  results = dict(
      model=config.model.name, compute_dtype=config.compute_dtype,
      matmul_precision=config.get("matmul_precision", "default"),
      num_params=built.num_params, batch_size=batch_size,
      mesh_devices=built.mesh_devices, kernels=built.kernels,
      example_shape=list(built.example_shape), lower_s=train_step.lower_s,
      compile_s=train_step.compile_s, train_steps=num_steps,
      train_step_s=seconds, train_images_per_s=batch_size / seconds,
      train_images_per_s_best=batch_size / best,
      train_flops_per_image=train_step.flops / batch_size,
      train_flops_per_s=train_step.flops / seconds)
  if profile_dir:
    with jax.profiler.trace(profile_dir):
      for step in range(3):
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
          train_step.run()
    results["profile_dir"] = profile_dir
  if built.eval is not None:
    eval_step = built.eval
    time_calls(eval_step.run, warmup)
    seconds, best = _median_and_best(time_calls(eval_step.run, num_eval_steps))
    results.update(
        eval_batch_size=eval_step.batch_size, eval_compile_s=eval_step.compile_s,
        eval_steps=num_eval_steps, eval_step_s=seconds,
        eval_images_per_s=eval_step.batch_size / seconds,
        eval_images_per_s_best=eval_step.batch_size / best,
        eval_flops_per_image=eval_step.flops / eval_step.batch_size)
  return results


# ----------------------------------------------------------------------------
# Input pipeline.
# ----------------------------------------------------------------------------
def bench_pipeline(config, *, batch_size: int, num_batches: int,
                   warmup: int) -> dict[str, Any]:
  """Times the config's tf.data training input; see the module doc."""
  # pylint: disable=g-import-not-at-top
  import ml_collections
  from jaxattn import experiment
  from jaxattn.data import pipeline
  # pylint: enable=g-import-not-at-top

  config = ml_collections.ConfigDict(config.to_dict())
  config.batch_size = batch_size
  # Only the training split is read: other splits need not exist. One
  # process, all of the batch: the host's whole input pipeline is timed.
  exp = experiment.Experiment(config, data="train")
  config, steps_per_epoch = exp.config, exp.steps_per_epoch
  total = warmup + num_batches
  start = time.perf_counter()
  ds = pipeline.create_train_dataset(
      exp.source, config, shard=pipeline.ProcessShard(0, 1, batch_size),
      steps_per_epoch=steps_per_epoch,
      num_epochs=-(-total // steps_per_epoch), standardize=False)
  batches = pipeline.as_numpy(ds)
  for _ in range(warmup):
    next(batches)
  warmup_seconds = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(num_batches):
    next(batches)
  seconds = time.perf_counter() - start
  return dict(
      dataset=config.dataset, split=config.train_split, batch_size=batch_size,
      # What training gets: uint8 images (standardised in the step).
      crop_impl=(pipeline.crop_impl(config)
                 if config.augment.random_resized_crop else "none"),
      input_threads=pipeline.input_threads(config),
      pipeline_warmup_batches=warmup,
      pipeline_warmup_s=warmup_seconds, pipeline_batches=num_batches,
      pipeline_s=seconds, pipeline_images_per_s=num_batches * batch_size /
      seconds,
      # Batches after the first epoch come from the decoded cache.
      pipeline_from_cache=bool(config.cache and warmup >= steps_per_epoch),
      steps_per_epoch=steps_per_epoch)


def host_peaks(achieved_flops_per_s: float, compute_dtype: str,
               size: int = 2048) -> dict[str, float]:
  """The host's fp32 and bf16 matmul peaks, and the step's share of its own."""
  peaks = {dtype: matmul_peak(dtype, size)
           for dtype in ("float32", "bfloat16")}
  peak = peaks.get(compute_dtype, peaks["float32"])
  return dict(host_matmul_flops_per_s_float32=peaks["float32"],
              host_matmul_flops_per_s_bfloat16=peaks["bfloat16"],
              train_fraction_of_matmul_peak=achieved_flops_per_s / peak)


# ----------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------
def _print(results: dict[str, Any]) -> None:
  for key, value in results.items():
    if isinstance(value, float):
      value = f"{value:.4g}" if abs(value) < 1e4 else f"{value:.4e}"
    print(f"{key:28s} {value}")
  sys.stdout.flush()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from jaxattn import cpu_defaults  # pylint: disable=g-import-not-at-top
  cpu_defaults.configure()  # As main.py: a JAX device per core on CPU.
  from jaxattn import configlib  # pylint: disable=g-import-not-at-top
  try:
    config = configlib.config_from_flag()
  except configlib.ConfigError as e:
    raise app.UsageError(str(e)) from None
  for name, minimum in (("steps", 1), ("warmup", 0), ("eval_steps", 0)):
    if flags.FLAGS[name].value < minimum:
      raise app.UsageError(
          f"--{name}={flags.FLAGS[name].value} is out of range (>= {minimum}).")
  if flags.FLAGS.mode == "train":  # Not timing a GPU plugin that failed.
    from jaxattn import accelerator_check  # pylint: disable=g-import-not-at-top
    accelerator_check.check(allow_cpu=flags.FLAGS.allow_cpu)
  batch_size = flags.FLAGS.batch or config.batch_size
  results = dict(command=" ".join(["python -m jaxattn.bench", *sys.argv[1:]]),
                 config=config_flags.get_config_filename(flags.FLAGS["config"]),
                 mode=flags.FLAGS.mode, **machine())
  if flags.FLAGS.mode == "train":
    results.update(bench_steps(
        config, batch_size=batch_size,
        eval_batch_size=flags.FLAGS.eval_batch or config.eval_batch_size,
        num_steps=flags.FLAGS.steps, num_eval_steps=flags.FLAGS.eval_steps,
        warmup=flags.FLAGS.warmup, profile_dir=flags.FLAGS.profile_dir,
        hlo_file=flags.FLAGS.hlo_file))
  else:
    results.update(bench_pipeline(config, batch_size=batch_size,
                                  num_batches=flags.FLAGS.steps,
                                  warmup=flags.FLAGS.warmup))
  if flags.FLAGS.mode == "train" and flags.FLAGS.peak:
    results.update(host_peaks(results["train_flops_per_s"],
                              results["compute_dtype"],
                              flags.FLAGS.peak_size))
  results["peak_rss_mib"] = peak_rss_mib()
  _print(results)
  if flags.FLAGS.json:
    with open(flags.FLAGS.json, "w") as f:
      json.dump(results, f, indent=2)
      f.write("\n")


if __name__ == "__main__":
  import jax  # pylint: disable=g-import-not-at-top
  from jaxattn import configlib, console  # pylint: disable=g-import-not-at-top
  # --config=NAME[:ARG] may name a config bundled with the package.
  sys.argv = configlib.expand_bundled_config(sys.argv)
  jax.config.config_with_absl()  # --jax_num_cpu_devices=2 etc.
  define_flags()
  console.run(main)  # app.run, with --library_logs and --traceback.
