r"""Classify image files with a trained run: top-k classes and probabilities.

  python -m jaxattn.predict WORKDIR FILES... [--top_k=5] [--json] \
      [--checkpoint=best|latest|STEP]

Files are resized and normalised exactly as evaluation does it. The text
output is one block per file; ``--json`` prints one JSON list instead
(``file``, ``top_k``: [{``class``, ``name``, ``probability``}]).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from absl import flags
import jax


def define_flags() -> None:
  """The command's flags; defined only when it runs, so that importing this
  module beside other absl programs (main.py) defines no flags."""
  flags.DEFINE_integer("top_k", 5, "How many classes to list per file.")
  flags.DEFINE_bool("json", False, "Print JSON instead of text.")
  flags.DEFINE_string(
      "checkpoint", "best", "best (the latest if the run kept no best), "
      "latest or a step number.")


def predict_files(workdir: str, files: Sequence[str], *, top_k: int = 5,
                  checkpoint: str = "best") -> list[dict[str, Any]]:
  """[{file, top_k: [{class, name, probability}]}] for each file, in order."""
  from jaxattn import inference  # pylint: disable=g-import-not-at-top
  if top_k < 1:
    raise inference.InputError(f"--top_k={top_k} must be at least 1.")
  if not files:
    raise inference.InputError("No image files given: python -m "
                               "jaxattn.predict WORKDIR FILE [FILE ...].")
  run = inference.load_run(workdir, checkpoint)
  images = inference.read_images(files, run.config)
  probabilities = inference.make_predict_fn(run)(images)
  names = run.class_names
  results = []
  for path, probs in zip(files, probabilities):
    best = probs.argsort()[::-1][:top_k]
    results.append(dict(file=path, top_k=[
        dict({"class": int(c)}, name=names[c], probability=float(probs[c]))
        for c in best]))
  return results


def format_text(results: list[dict[str, Any]]) -> str:
  lines = []
  for result in results:
    lines.append(result["file"])
    width = max(len(p["name"]) for p in result["top_k"])
    for rank, p in enumerate(result["top_k"], 1):
      lines.append(f"  {rank}. {p['name']:<{width}}  {p['probability']:7.2%}"
                   f"  (class {p['class']})")
  return "\n".join(lines)


def main(argv):
  from jaxattn import inference  # pylint: disable=g-import-not-at-top
  inference.start_command(argv, "python -m jaxattn.predict WORKDIR FILE "
                          "[FILE ...] [--top_k=5] [--json]")
  # Bad input (InputError) ends the command as one line (jaxattn.console).
  results = predict_files(argv[1], argv[2:], top_k=flags.FLAGS.top_k,
                          checkpoint=flags.FLAGS.checkpoint)
  print(json.dumps(results, indent=2) if flags.FLAGS.json
        else format_text(results))


if __name__ == "__main__":
  from jaxattn import console  # pylint: disable=g-import-not-at-top
  jax.config.config_with_absl()  # --jax_num_cpu_devices=N etc.
  define_flags()
  console.run(main)  # app.run, with --library_logs and --traceback.
