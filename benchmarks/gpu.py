r"""Every config's train step on an accelerator: img/s, compile time, peak.

  python benchmarks/gpu.py [--configs=cifar10_convvit,cifar10_vit,...]
      [--dtypes=float32,bfloat16] [--kernels=plain,cpu] [--steps=20]
      [--timeout=300] [--json=FILE]

For each (config, compute dtype, kernel set) it runs ``python -m
jaxattn.bench`` in a fresh process (the very train step ``main.py`` runs, on
synthetic batches of the config's shape; no dataset, no TensorFlow) and
prints one Markdown table: train images/s, compile time, and the step's
achieved FLOP/s as a fraction of the device's measured matmul peak in that
dtype (``jaxattn.bench``'s ``train_fraction_of_matmul_peak``). The plain
kernels are what ``config.kernels="auto"`` gives a GPU; the CPU kernels are
there to show what the XLA:CPU rewrites would cost on it. float32 rows run
at each config's own ``matmul_precision`` (the seed 002-004 recipes:
"highest", true float32; seeds 000, 001 and user configs: "default", TF32
on NVIDIA GPUs); ``--matmul_precision`` sets one for all.

A run that fails or exceeds ``--timeout`` seconds is reported in its row,
and the table goes on. Defaults: every config in ``configs/`` at its own
batch size, both dtypes, both kernel sets; about 64 runs of 20-60 s on one
H100. With a 15-minute device budget, name fewer, e.g.::

  python benchmarks/gpu.py --configs=cifar10_convvit,cifar10_vit,\
cifar10_slresnet50,mnist_se_cnn,cifar10_hybrid --kernels=plain --steps=10

On a host without an accelerator it times the CPU (each row names the
device kind); ``benchmarks/torch_vs_jax.py`` is the CPU's benchmark.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def all_configs() -> list[str]:
  return sorted(os.path.basename(p)[:-3]
                for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                if not p.endswith("__init__.py"))


def bench(config: str, dtype: str, kernels: str, *, steps: int, timeout: int,
          allow_cpu: bool, matmul_precision: str = "") -> dict:
  """One ``jaxattn.bench`` process; its JSON, or an "error" entry."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "bench.json")
    command = [sys.executable, "-m", "jaxattn.bench",
               f"--config=configs/{config}.py", f"--steps={steps}",
               "--warmup=3", "--eval_steps=0", f"--json={out}",
               f"--config.compute_dtype={dtype}",
               f"--config.kernels={kernels}"]
    if allow_cpu:
      command.append("--allow_cpu")
    if matmul_precision:
      command.append(f"--config.matmul_precision={matmul_precision}")
    start = time.perf_counter()
    try:
      proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                            timeout=timeout)
    except subprocess.TimeoutExpired:
      return dict(error=f"over {timeout} s")
    if proc.returncode:
      last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
      return dict(error=f"rc {proc.returncode}: {last[:200]}")
    with open(out) as f:
      result = json.load(f)
    result["wall_s"] = time.perf_counter() - start
    return result


def row(config: str, dtype: str, kernels: str, result: dict) -> str:
  if "error" in result:
    return f"| {config} | {dtype} | {kernels} | {result['error']} | | | | | |"
  fraction = result.get("train_fraction_of_matmul_peak")
  return (f"| {config} | {dtype} | {kernels} | "
          f"{result.get('matmul_precision', '?')} | "
          f"{result['train_images_per_s']:,.0f} | {result['compile_s']:.1f} | "
          f"{'' if fraction is None else f'{fraction:.1%}'} | "
          f"{result['batch_size']} on {result['mesh_devices']} | "
          f"{result.get('device_kind', '?')} |")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--configs", default=",".join(all_configs()))
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--kernels", default="plain,cpu")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--timeout", type=int, default=300,
                      help="Seconds per bench process.")
  parser.add_argument("--allow_cpu", action="store_true",
                      help="Passed to jaxattn.bench: time the CPU although "
                      "an accelerator plugin is installed.")
  parser.add_argument("--matmul_precision", default="",
                      help="default, high or highest for every run; empty: "
                      "each config's own.")
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)
  known = set(all_configs())
  configs = [c for c in args.configs.split(",") if c]
  unknown = [c for c in configs if c not in known]
  if unknown:
    parser.error(f"unknown config(s) {unknown}; known: {sorted(known)}")

  print("| config | compute dtype | kernels | matmul precision | train img/s "
        "| compile s | of matmul peak | batch on devices | device |\n"
        "|---|---|---|---|---|---|---|---|---|",
        flush=True)
  results = []
  for config in configs:
    for dtype in args.dtypes.split(","):
      for kernels in args.kernels.split(","):
        result = bench(config, dtype, kernels, steps=args.steps,
                       timeout=args.timeout, allow_cpu=args.allow_cpu,
                       matmul_precision=args.matmul_precision)
        results.append({**result, "config_file": config,
                        "compute_dtype": dtype, "kernels": kernels})
        print(row(config, dtype, kernels, result), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
