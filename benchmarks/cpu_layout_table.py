r"""Train images/s of every family on one device, a device per core, and the
default layout (``jaxattn/cpu_layout.py``'s measured choice), on this host.

Each (case, layout) runs ``python -m jaxattn.bench`` in a fresh process, the
layouts interleaved in rounds so that a loaded host hits them alike; the
table gives the median of the rounds and the default's ratio to the best.
The default's probe runs in every round, in a process of its own with a
fresh layout cache, so its choice is measured as often as the numbers it is
compared with; the default is then timed in a second process that reads the
choice from that cache, as every run after a host's first does (the first
also pays for the probe, once per model and host)::

  python benchmarks/cpu_layout_table.py --rounds=2 \
      --json=benchmarks/results/cpu_layout_DAY.json

Cases: ``benchmarks/torch_vs_jax.py``'s (the same configs and batches as
the JAX-vs-PyTorch table), SL-ResNet-50 at batch 32 as in issue 20's table.
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
sys.path.insert(0, REPO)

from benchmarks.torch_vs_jax import CASES  # noqa: E402  pylint: disable=g-import-not-at-top
from jaxattn import cpu_defaults  # noqa: E402  pylint: disable=g-import-not-at-top

# (case, batch) rows; batch 0: the config's.
ROWS = (("conv_vit", 0), ("vit", 0), ("se_cnn", 0), ("slresnet50", 32),
        ("hybrid_head", 0))


def bench(case: str, batch: int, layout: str, steps: int) -> dict:
  """One fresh bench process; layout: "1", "per_core" or "default"."""
  spec = CASES[case]
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "bench.json")
    command = [sys.executable, "-m", "jaxattn.bench",
               f"--config={spec.config}", f"--steps={steps}",
               "--eval_steps=0", "--warmup=2", "--nopeak", f"--json={out}",
               *(f"--config.{k}={v}" for k, v in spec.overrides)]
    if batch:
      command.append(f"--batch={batch}")
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES", "PJRT_NPROC")}
    env["JAXATTN_CPU_LAYOUT_CACHE"] = os.path.join(tmp, "layout.json")
    if layout != "default":
      cores = cpu_defaults.usable_cores()
      command.append(f"--jax_num_cpu_devices={1 if layout == '1' else cores}")
    else:  # The probe, in a process of its own: it fills the cache.
      probe = [c for c in command if not c.startswith("--steps=")]
      subprocess.run(probe + ["--steps=1"], cwd=REPO, env=env, check=True,
                     capture_output=True, text=True, timeout=3600)
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=3600)
    if proc.returncode:
      raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    with open(out) as f:
      result = json.load(f)
    return dict(images_per_s=result["train_images_per_s"],
                mesh_devices=result["mesh_devices"],
                batch_size=result["batch_size"])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--rows", default=",".join(c for c, _ in ROWS))
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)
  rows = [(c, b) for c, b in ROWS if c in args.rows.split(",")]
  layouts = ("1", "per_core", "default")
  runs = {(c, l): [] for c, _ in rows for l in layouts}
  for _ in range(args.rounds):
    for case, batch in rows:
      for layout in layouts:
        runs[(case, layout)].append(bench(case, batch, layout, args.steps))
        print(case, layout, runs[(case, layout)][-1], flush=True)
  table = []
  for case, _ in rows:
    medians = {l: statistics.median(r["images_per_s"]
                                    for r in runs[(case, l)])
               for l in layouts}
    chosen = [r["mesh_devices"] for r in runs[(case, "default")]]
    table.append(dict(case=case, batch_size=runs[(case, "1")][0]["batch_size"],
                      one_device=medians["1"], per_core=medians["per_core"],
                      default=medians["default"], default_devices=chosen,
                      default_over_best=medians["default"] /
                      max(medians["1"], medians["per_core"])))
  cores = cpu_defaults.usable_cores()
  print(f"\n| model (batch) | 1 device | a device per core ({cores}) | "
        "default (devices the probe chose) | default / best |\n"
        "|---|---|---|---|---|")
  for row in table:
    print(f"| {row['case']} ({row['batch_size']}) | {row['one_device']:,.1f} "
          f"| {row['per_core']:,.1f} | {row['default']:,.1f} "
          f"({', '.join(map(str, row['default_devices']))}) | "
          f"{row['default_over_best']:.2f} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(cores=cores, rounds=args.rounds, steps=args.steps,
                     rows=table, runs={f"{c}/{l}": r
                                       for (c, l), r in runs.items()}),
                f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
