r"""Every architecture's train step under XLA:CPU's library-path options.

  python benchmarks/xla_cpu_flags.py [--cases=conv_vit,vit,...]
      [--variants=default,xnnpack,...] [--steps=10] [--rounds=2]
      [--json=FILE]

For each case (the configs of ``torch_vs_jax.CASES``) and each variant (a
set of ``XLA_FLAGS``, see ``VARIANTS``), runs ``python -m jaxattn.bench`` in
a fresh process (XLA reads its flags once per process) with the project's
CPU defaults otherwise (a JAX device per core), and prints the train step's
images/s per variant and its ratio to ``default``. Variants are run in
interleaved rounds (``--rounds``), so machine load drifts hit all alike; each
figure is the median over rounds. The step's outputs under each variant are
checked by the test suite, not here: adopt a variant only after the suite
passes with it (``tests/conftest.py`` applies ``cpu_defaults.XLA_CPU_FLAGS``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from torch_vs_jax import CASES  # noqa: E402  pylint: disable=g-import-not-at-top

_NO_YNN = "--xla_cpu_experimental_ynn_fusion_type="
_YNN_DOTS = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
# XLA_FLAGS per variant. In jaxlib 0.10.2 YNNPACK rewrites XLA:CPU's dots and
# convolutions by default and takes precedence over the oneDNN and XNNPACK
# rewrites, so those are measured with YNNPACK off (_NO_YNN) or limited to
# dots (_YNN_DOTS) as well.
VARIANTS: dict[str, str] = {
    "default": "",
    "one_device": "",  # JAX's own default: one CPU device (see DEVICES).
    "ynn_dots": _YNN_DOTS,
    "no_ynn": _NO_YNN,
    "onednn_no_ynn": f"{_NO_YNN} --xla_cpu_use_onednn=true",
    "onednn_dot_no_ynn":
        f"{_NO_YNN} --xla_cpu_experimental_onednn_fusion_type=dot",
    "xnnpack_no_ynn": f"{_NO_YNN} --xla_cpu_use_xnnpack=true",
    "ynn_dots_onednn": f"{_YNN_DOTS} --xla_cpu_use_onednn=true",
    "ynn_dots_xnnpack": f"{_YNN_DOTS} --xla_cpu_use_xnnpack=true",
}
DEVICES = {"one_device": 1}  # Variants that override the device count.


def bench_once(case_name: str, variant: str, steps: int) -> dict:
  case = CASES[case_name]
  with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
    out = f.name
  command = [sys.executable, "-m", "jaxattn.bench", f"--config={case.config}",
             f"--steps={steps}", "--eval_steps=0", "--nopeak", f"--json={out}"]
  command += [f"--config.{k}={v}" for k, v in case.overrides]
  if variant in DEVICES:
    command.append(f"--jax_num_cpu_devices={DEVICES[variant]}")
  env = dict(os.environ, XLA_FLAGS=VARIANTS[variant])
  proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=1200)
  if proc.returncode != 0:
    return dict(error=proc.stderr.strip().splitlines()[-1][:300])
  with open(out) as f:
    result = json.load(f)
  os.unlink(out)
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--cases", default="conv_vit,conv_vit_bf16,vit,se_cnn,"
                      "slresnet50,hybrid_head")
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)
  cases = [c for c in args.cases.split(",") if c]
  variants = [v for v in args.variants.split(",") if v]
  for name in variants:
    if name not in VARIANTS:
      parser.error(f"Unknown variant {name!r}; known: {', '.join(VARIANTS)}.")
  for name in cases:
    if name not in CASES:
      parser.error(f"Unknown case {name!r}; known: {', '.join(CASES)}.")
  runs: dict[str, dict[str, list[dict]]] = {c: {v: [] for v in variants}
                                           for c in cases}
  for round_index in range(args.rounds):
    for case in cases:
      for variant in variants:
        result = bench_once(case, variant, args.steps)
        runs[case][variant].append(result)
        figure = result.get("train_images_per_s", result.get("error"))
        print(f"round {round_index} {case:14s} {variant:26s} {figure}",
              flush=True)
        if args.json:
          with open(args.json, "w") as f:
            json.dump(dict(variants=VARIANTS, runs=runs), f, indent=2)
  print("\n| case | " + " | ".join(variants) + " |")
  print("|---|" + "---|" * len(variants))
  for case in cases:
    medians = {}
    for variant in variants:
      values = [r["train_images_per_s"] for r in runs[case][variant]
                if "train_images_per_s" in r]
      medians[variant] = statistics.median(values) if values else None
    base = medians.get("default")
    cells = []
    for variant in variants:
      m = medians[variant]
      if m is None:
        cells.append("failed")
      elif base:
        cells.append(f"{m:,.0f} ({m / base:.2f})")
      else:
        cells.append(f"{m:,.0f}")
    print(f"| {case} | " + " | ".join(cells) + " |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
