"""The before/after table of benchmarks/pipeline_before_after.sh's JSON:
median of the rounds, images/s and images/s per core."""
import glob
import json
import os
import statistics
import sys

out = sys.argv[1]
rows = {}
for path in glob.glob(os.path.join(out, "*.json")):
  size, *impl, cores, _ = os.path.basename(path)[:-5].split("_")
  with open(path) as f:
    rows.setdefault((size, "_".join(impl), cores), []).append(
        json.load(f)["pipeline_images_per_s"])
print("| images | path | cores | img/s (median of runs) | img/s per core | runs |")
print("|---|---|---|---|---|---|")
for (size, impl, cores), values in sorted(
    rows.items(), key=lambda kv: (-int(kv[0][0]), kv[0][2], kv[0][1])):
  n = len(cores[1:])
  median = statistics.median(values)
  print(f"| {size} px | {impl} | {n} | {median:,.0f} | {median / n:,.0f} | "
        f"{', '.join(f'{v:,.0f}' for v in sorted(values))} |")
