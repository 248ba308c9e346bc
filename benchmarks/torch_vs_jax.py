r"""JAX train step vs the same model's plain-PyTorch train step, same run.

  python benchmarks/torch_vs_jax.py [--cases=conv_vit,vit,se_cnn,slresnet50,hybrid_head]
      [--steps=10] [--rounds=3] [--compile_timeout=900] [--no_compile]
      [--jax_cpu_devices=N] [--json=FILE]

For each case (a config plus overrides, see ``CASES``), in one process:

* JAX: ``jaxattn.bench.build_steps``, the very train step ``main.py`` runs
  (jit, shardings, donated state), compiled ahead of time;
* PyTorch eager: the project's PyTorch twin of the model
  (``jaxattn.convert.torch_model_for``: the authors' layouts, NCHW), its
  ``torch.optim`` counterpart of the config's optimizer, gradient clipping
  and loss, on a batch of the same shape;
* PyTorch ``torch.compile`` (inductor) of the same module, unless
  ``--no_compile``; a compile that fails or exceeds ``--compile_timeout``
  seconds is reported as such and the case goes on without it.

Same global batch and precision for all three: ``compute_dtype=bfloat16``
runs PyTorch under ``torch.autocast("cpu", torch.bfloat16)`` (parameters stay
float32 in both). The three are timed in interleaved rounds (``--rounds`` x
``--steps`` steps each, after warm-up), so load from other processes hits
them alike; each figure is the median step time over all rounds. The table
(Markdown) gives images/s and the ratio JAX / PyTorch.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import statistics
import sys
import time
import traceback
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


@dataclasses.dataclass(frozen=True)
class Case:
  """One architecture to compare: a config file[:ARGS] and key overrides."""

  config: str
  overrides: tuple[tuple[str, Any], ...] = ()
  note: str = ""


# conv_vit and vit in fp32 (as configured) and in bf16, whose dots XLA:CPU
# runs on AMX (benchmarks/README.md). Until 2026-12-04 seed 004's recipe was
# bf16; the dated results name it "as configured (bf16)".
CASES: dict[str, Case] = {
    "conv_vit": Case("configs/cifar10_convvit.py",
                     (("compute_dtype", "float32"),),
                     "seed 004, 32 px, batch 128, fp32"),
    "conv_vit_bf16": Case("configs/cifar10_convvit.py",
                          (("compute_dtype", "bfloat16"),),
                          "seed 004 in bf16"),
    "vit": Case("configs/cifar10_vit.py", (), "seed 002, 32 px, batch 32"),
    "vit_bf16": Case("configs/cifar10_vit.py",
                     (("compute_dtype", "bfloat16"),),
                     "seed 002 in bf16 (matmuls on AMX where the CPU has it)"),
    "se_cnn": Case("configs/mnist_se_cnn.py", (), "seed 003, 28 px grey"),
    "slresnet50": Case("configs/cifar10_slresnet50.py", (),
                       "seed 001, 64 px, batch 128, 1000-way head"),
    "hybrid_head": Case("configs/cifar10_hybrid.py",
                        (("cache_backbone_features", True),),
                        "seed 000 fusion head on cached ViT-B/8 logits, "
                        "batch 64"),
}
DEFAULT_CASES = ("conv_vit", "vit", "se_cnn", "slresnet50", "hybrid_head")


def load_config(case: Case, batch_size: int = 0):
  """The case's config with its overrides (dotted keys) applied."""
  from jaxattn import configlib  # pylint: disable=g-import-not-at-top
  overrides = dict(case.overrides)
  if batch_size:
    overrides["batch_size"] = batch_size
  return configlib.load(os.path.join(REPO, case.config), overrides)


# ----------------------------------------------------------------------------
# PyTorch side.
# ----------------------------------------------------------------------------
def torch_optimizer(config, params):
  """The torch.optim counterpart of config.optimizer (constant lr)."""
  import torch  # pylint: disable=g-import-not-at-top
  o, lr = config.optimizer, config.schedule.lr or 1e-3
  if o.name == "adam":
    return torch.optim.Adam(params, lr, betas=(o.b1, o.b2), eps=o.eps,
                            weight_decay=o.weight_decay)
  if o.name == "adamw":
    return torch.optim.AdamW(params, lr, betas=(o.b1, o.b2), eps=o.eps,
                             weight_decay=o.weight_decay)
  if o.name == "adamax":
    return torch.optim.Adamax(params, lr, betas=(o.b1, o.b2), eps=o.eps)
  if o.name == "sgd":
    return torch.optim.SGD(params, lr, momentum=o.momentum,
                           nesterov=o.nesterov, weight_decay=o.weight_decay)
  raise ValueError(f"No torch.optim counterpart for {o.name!r}.")


def torch_loss(outputs, labels, config):
  """The config's loss: cross-entropy, or weighted over dict outputs."""
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  if not isinstance(outputs, dict):
    return F.cross_entropy(outputs.float(), labels,
                           label_smoothing=config.label_smoothing)
  # Probabilities: Keras' clipped categorical cross-entropy, as LossSpec.
  return sum(weight * F.nll_loss(
      outputs[name].float().clamp(1e-7, 1 - 1e-7).log(), labels)
             for name, weight in dict(config.loss_weights).items())


class TorchStep:
  """One plain-PyTorch train step (forward, loss, backward, clip, update)."""

  def __init__(self, module, config, example_shape, batch_size: int):
    import torch  # pylint: disable=g-import-not-at-top
    self.torch = torch
    self.module, self.config = module.train(), config
    self.params = [p for p in module.parameters() if p.requires_grad]
    self.optimizer = torch_optimizer(config, self.params)
    generator = torch.Generator().manual_seed(0)
    shape = example_shape
    if len(shape) == 3:  # NHWC in JAX, NCHW in PyTorch.
      shape = (shape[2], shape[0], shape[1])
    self.inputs = torch.randn(batch_size, *shape, generator=generator)
    self.labels = torch.randint(0, config.num_classes, (batch_size,),
                                generator=generator)
    self.autocast = config.compute_dtype == "bfloat16"

  def __call__(self, module=None):
    torch, config = self.torch, self.config
    self.optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
      outputs = (self.module if module is None else module)(self.inputs)
    loss = torch_loss(outputs, self.labels, config)
    loss.backward()
    if config.grad_clip_norm and config.grad_clip_mode == "global":
      torch.nn.utils.clip_grad_norm_(self.params, config.grad_clip_norm)
    elif config.grad_clip_norm:  # Keras' clipnorm: each tensor on its own.
      for p in self.params:
        torch.nn.utils.clip_grad_norm_([p], config.grad_clip_norm)
    self.optimizer.step()


def torch_twin(config):
  """The project's PyTorch definition of the part the JAX step trains."""
  # pylint: disable=g-import-not-at-top
  from jaxattn.convert.commands import torch_model_for
  from jaxattn.torch_models import create_torch_model
  # pylint: enable=g-import-not-at-top
  if config.cache_backbone_features:
    # The JAX step never runs the frozen backbone on cached logits either.
    return create_torch_model(
        "hybrid_head", num_classes=config.num_classes,
        duplicate_avg_branch=config.model.get("duplicate_avg_branch", True),
        refinement=config.model.get("refinement", "none"))
  return torch_model_for(config)


@contextlib.contextmanager
def time_limit(seconds: int):
  """Raises TimeoutError in this (main) thread after `seconds`."""
  def expire(signum, frame):
    del signum, frame
    raise TimeoutError(f"exceeded {seconds} s")
  previous = signal.signal(signal.SIGALRM, expire)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# ----------------------------------------------------------------------------
# One case.
# ----------------------------------------------------------------------------
def run_case(name: str, case: Case, *, steps: int, rounds: int, warmup: int,
             batch_size: int, compile_torch: bool,
             compile_timeout: int) -> dict[str, Any]:
  import torch  # pylint: disable=g-import-not-at-top
  from jaxattn import bench  # pylint: disable=g-import-not-at-top

  config = load_config(case, batch_size)
  print(f"\n== {name}: {case.config} {dict(case.overrides)}", flush=True)
  built = bench.build_steps(config, batch_size=config.batch_size)
  config = built.config
  result = dict(case=name, config=case.config, overrides=dict(case.overrides),
                note=case.note, model=config.model.name,
                batch_size=config.batch_size,
                compute_dtype=config.compute_dtype,
                jax_compile_s=built.train.compile_s)
  print(f"JAX compiled in {built.train.compile_s:.1f} s", flush=True)

  torch_step = TorchStep(torch_twin(config), config, built.example_shape,
                         config.batch_size)
  runners = {"jax": built.train.run, "torch_eager": torch_step}
  if compile_torch:
    compiled_module = torch.compile(torch_step.module)
    start = time.perf_counter()
    try:
      with time_limit(compile_timeout):
        torch_step(compiled_module)  # Compiles forward and backward.
      result["torch_compile_s"] = time.perf_counter() - start
      runners["torch_compile"] = lambda: torch_step(compiled_module)
      print(f"torch.compile: {result['torch_compile_s']:.1f} s", flush=True)
    except Exception as e:  # pylint: disable=broad-except
      result["torch_compile_error"] = f"{type(e).__name__}: {e}"[:500]
      print(f"torch.compile failed: {result['torch_compile_error']}",
            flush=True)
      if not isinstance(e, TimeoutError):
        traceback.print_exc()

  seconds = {key: [] for key in runners}
  for key, run in runners.items():
    bench.time_calls(run, warmup)
  for _ in range(rounds):  # Interleaved, so load changes hit all alike.
    for key, run in runners.items():
      seconds[key].extend(bench.time_calls(run, steps))
  for key, values in seconds.items():
    median = statistics.median(values)
    result[f"{key}_step_s"] = median
    result[f"{key}_images_per_s"] = config.batch_size / median
    result[f"{key}_images_per_s_best"] = config.batch_size / min(values)
  for key in ("torch_eager", "torch_compile"):
    if key in seconds:
      result[f"jax_over_{key}"] = (result["jax_images_per_s"] /
                                   result[f"{key}_images_per_s"])
  # Counted after the timing: under the CPU kernels this compiles the plain
  # step once more (bench.CompiledStep.flops).
  result["jax_flops_per_image"] = built.train.flops / config.batch_size
  result["peak_rss_mib"] = bench.peak_rss_mib()
  print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                    for k, v in result.items()}), flush=True)
  return result


def markdown_table(results: list[dict[str, Any]]) -> str:
  def number(row, key, fmt="{:.0f}"):
    return fmt.format(row[key]) if key in row else "—"

  lines = ["| model | batch | dtype | JAX img/s | PyTorch eager img/s | "
           "torch.compile img/s | JAX / eager | JAX / compile |",
           "|---|---|---|---|---|---|---|---|"]
  for row in results:
    compiled = number(row, "torch_compile_images_per_s")
    if "torch_compile_error" in row:
      compiled = "failed: " + row["torch_compile_error"].split(":")[0]
    lines.append(
        f"| {row['case']} | {row['batch_size']} | {row['compute_dtype']} | "
        f"{number(row, 'jax_images_per_s')} | "
        f"{number(row, 'torch_eager_images_per_s')} | {compiled} | "
        f"{number(row, 'jax_over_torch_eager', '{:.2f}')} | "
        f"{number(row, 'jax_over_torch_compile', '{:.2f}')} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                      help=f"Comma-separated, from: {', '.join(CASES)}.")
  parser.add_argument("--steps", type=int, default=10,
                      help="Timed steps per framework per round.")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--batch", type=int, default=0,
                      help="Override every case's batch size (0: config's).")
  parser.add_argument("--no_compile", action="store_true",
                      help="Skip torch.compile.")
  parser.add_argument("--compile_timeout", type=int, default=900,
                      help="Seconds allowed for torch.compile's first step.")
  parser.add_argument("--jax_cpu_devices", type=int, default=0,
                      help="Split JAX's CPU into this many devices; 0: the "
                      "project's CPU default, as main.py (one per core, "
                      "jaxattn/cpu_defaults.py).")
  parser.add_argument("--json", default="", help="Write all results here.")
  args = parser.parse_args(argv)
  names = [n.strip() for n in args.cases.split(",") if n.strip()]
  unknown = [n for n in names if n not in CASES]
  if unknown:
    parser.error(f"Unknown case(s) {unknown}; known: {', '.join(CASES)}.")

  import jax  # pylint: disable=g-import-not-at-top
  from jaxattn import cpu_defaults  # pylint: disable=g-import-not-at-top
  if args.jax_cpu_devices:  # Before JAX starts its CPU backend.
    jax.config.update("jax_num_cpu_devices", args.jax_cpu_devices)
  cpu_defaults.configure()  # What main.py runs with (yields to the above).
  import torch  # pylint: disable=g-import-not-at-top
  from jaxattn import bench  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count() or 1)
  header = dict(bench.machine(),
                host_matmul_flops_per_s_float32=bench.matmul_peak("float32"),
                host_matmul_flops_per_s_bfloat16=bench.matmul_peak("bfloat16"),
                torch_version=torch.__version__,
                torch_threads=torch.get_num_threads(),
                command=" ".join(["python", *sys.argv]))
  print(json.dumps(header), flush=True)
  results = []
  for name in names:
    results.append(run_case(
        name, CASES[name], steps=args.steps, rounds=args.rounds,
        warmup=args.warmup, batch_size=args.batch,
        compile_torch=not args.no_compile,
        compile_timeout=args.compile_timeout))
    if args.json:  # Written after each case: a long run keeps what it has.
      with open(args.json, "w") as f:
        json.dump(dict(header, results=results), f, indent=2)
        f.write("\n")
  print("\n" + markdown_table(results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
