"""Per-epoch validation accuracy of runs, beside seed 004's reported curve.

Each argument is LABEL=DIR, where DIR holds a metrics.csv (a jaxattn
workdir, or torch_seed_recipe.py's --out); prints a Markdown table:

  python benchmarks/seed004/side_by_side.py "jaxattn f32=W1" "PyTorch=W2"
"""

import csv
import os
import sys

from jaxattn.recipes import SEED004_TEST_ACCURACY


def main(argv):
  runs = []
  for arg in argv:
    label, _, directory = arg.partition("=")
    with open(os.path.join(directory, "metrics.csv")) as f:
      runs.append((label, list(csv.DictReader(f))))
  print("| epoch | seed 004 (test, reported) | " +
        " | ".join(f"{label} (val)" for label, _ in runs) + " |")
  print("|---" * (2 + len(runs)) + "|")
  for epoch, seed in enumerate(SEED004_TEST_ACCURACY, 1):
    cells = []
    for _, rows in runs:
      row = next((r for r in rows if int(r["epoch"]) == epoch), None)
      cells.append(f"{100 * float(row['val_accuracy']):.1f}" if row else "")
    print(f"| {epoch} | {100 * seed:.1f} | " + " | ".join(cells) + " |")
  for name, key in (("train accuracy, epoch 25", "train_accuracy"),):
    cells = []
    for _, rows in runs:
      row = next((r for r in rows if int(r["epoch"]) == 25), None)
      cells.append(f"{100 * float(row[key]):.1f}" if row else "")
    print(f"| {name} | 62.3 | " + " | ".join(cells) + " |")
  cells = []
  for _, rows in runs:
    seconds = sorted(float(r["epoch_seconds"]) for r in rows)
    cells.append(f"{seconds[len(seconds) // 2]:.0f}" if seconds else "")
  print("| median epoch seconds (training) | 68 (GPU) | " + " | ".join(cells)
        + " |")


if __name__ == "__main__":
  main(sys.argv[1:])
