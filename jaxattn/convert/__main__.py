r"""Convert checkpoints between jaxattn (Flax) and PyTorch.

  python -m jaxattn.convert to-torch WORKDIR_OR_CHECKPOINT --out FILE \
      [--step N|best|latest] [--layout NAME] [--overwrite]
  python -m jaxattn.convert from-torch FILE --config=configs/NAME.py[:ARGS] \
      --out DIR [--layout NAME] [--overwrite] [--config.KEY=VALUE ...]
  python -m jaxattn.convert layouts [MODEL]
  python -m jaxattn.convert export WORKDIR_OR_CHECKPOINT --out FILE \
      [--step N|best|latest] [--batch_size N|0] [--overwrite]

to-torch writes a PyTorch state_dict (.safetensors; .pt/.pth/.bin with
torch.save; .npz for the vit_jax layout) that loads with
load_state_dict(strict=True) into the layout's PyTorch module. from-torch
writes DIR/variables.npz and DIR/conversion.json for --config.init_from=DIR.
export writes the model's eval-mode forward pass (preprocessed NHWC float32
images -> logits), variables included, as a serialized jax.export program
(CPU and CUDA), and FILE.json describing its input, classes and
preprocessing; jax.export.deserialize(bytearray(open(FILE, 'rb').read()))
.call(images) runs it with no jaxattn.

Bad input (a missing file, a checkpoint or layout that does not fit) ends
with "error: MESSAGE" and exit status 2, as argparse's usage errors;
--traceback shows where it was raised. --library_logs shows the libraries'
log lines (Orbax's notices), which are hidden by default.
"""

from __future__ import annotations

import argparse
import os
import sys

from jaxattn import console, errors

# Before TensorFlow is imported: no INFO lines from its C++ side.
_QUIETED_TENSORFLOW = console.quiet_tensorflow()

from jaxattn.convert import rules
from jaxattn.convert.plan import ConversionError


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m jaxattn.convert", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=__doc__.split("\n\n", 1)[1])
  # Every command takes these (after its name, like its other options).
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--traceback", action="store_true",
                      help=console.TRACEBACK_HELP)
  common.add_argument("--library_logs", action="store_true",
                      help=console.LIBRARY_LOGS_HELP)
  sub = parser.add_subparsers(dest="command", required=True)
  add_parser = lambda *a, **k: sub.add_parser(*a, parents=[common], **k)
  to = add_parser("to-torch", help="a training run -> a PyTorch file")
  to.add_argument("path", help="workdir, or WORKDIR/checkpoints[_best]/STEP")
  to.add_argument("--out", required=True,
                  help="FILE.safetensors (or .pt/.pth/.bin, .npz)")
  to.add_argument("--step", default=None,
                  help="best, latest or a step (default: the step in the "
                       "path, else latest)")
  to.add_argument("--layout", default=None,
                  help="key layout (default: the model's; see `layouts`)")
  to.add_argument("--overwrite", action="store_true",
                  help="replace --out if it exists")
  fr = add_parser("from-torch",
                  help="a PyTorch / vit_jax file -> Flax variables")
  fr.add_argument("file", help=".safetensors, .pt/.pth/.bin or .npz")
  fr.add_argument("--config", required=True,
                  help="configs/NAME.py[:ARGS], the run's config")
  fr.add_argument("--out", required=True,
                  help="directory for variables.npz and conversion.json")
  fr.add_argument("--layout", default=None,
                  help="key layout (default: the model's; .npz files: "
                       "vit_jax)")
  fr.add_argument("--overwrite", action="store_true",
                  help="replace variables.npz/conversion.json in --out")
  ls = add_parser("layouts", help="list the layouts of each model")
  ls.add_argument("model", nargs="?", default=None)
  ex = add_parser("export",
                  help="a training run -> a jax.export file (+ FILE.json)")
  ex.add_argument("path", help="workdir, or WORKDIR/checkpoints[_best]/STEP")
  ex.add_argument("--out", required=True,
                  help="the file to write, e.g. model.jaxexport; its "
                       "description goes to FILE.json")
  ex.add_argument("--step", default=None,
                  help="best, latest or a step (default: the step in the "
                       "path, else best, which is latest when the run kept "
                       "no best checkpoint)")
  ex.add_argument("--batch_size", type=int, default=0,
                  help="0: any batch size (a symbolic batch dimension, the "
                       "default); N > 0: exactly N images")
  ex.add_argument("--overwrite", action="store_true",
                  help="replace --out and FILE.json if they exist")
  return parser


def _config_overrides(extra: list[str], parser) -> dict[str, str]:
  overrides = {}
  for token in extra:
    key, sep, value = token.partition("=")
    if not (key.startswith("--config.") and sep):
      parser.error(f"unrecognized argument {token!r} (config overrides are "
                   "--config.KEY=VALUE)")
    overrides[key[len("--config."):]] = value
  return overrides


def _print_layouts(model: str | None) -> None:
  models = [model] if model else rules.models_with_layouts()
  for name in models:
    if name not in rules.models_with_layouts():
      raise ConversionError(f"No conversion rules for model {name!r}; "
                            f"models: {', '.join(rules.models_with_layouts())}.")
    print(f"{name}:")
    for i, layout in enumerate(rules.layouts(name).values()):
      default = " (default)" if i == 0 else ""
      print(f"  {layout.name}{default}: {layout.description}")


def _numerics_line(numerics: rules.Numerics) -> str:
  parts = []
  if numerics.layer_norm_eps is not None:
    parts.append(f"LayerNorm eps {numerics.layer_norm_eps:g}")
  if numerics.gelu is not None:
    parts.append(f"GELU(approximate={numerics.gelu!r})")
  if numerics.batch_norm_eps is not None:
    parts.append(f"BatchNorm eps {numerics.batch_norm_eps:g}")
  return "; ".join(parts) + (f". {numerics.notes}" if numerics.notes else "")


def _to_torch(args) -> None:
  from jaxattn.convert import commands  # pylint: disable=g-import-not-at-top
  step = args.step
  if step is not None and step.isdigit():
    step = int(step)
  s = commands.to_torch(args.path, args.out, step=step, layout=args.layout,
                        overwrite=args.overwrite)
  print(f"Wrote {s['out']}: {s['num_tensors']} tensors, model {s['model']}, "
        f"layout {s['layout']}, step {s['step']}.")
  if s["left_out"]:
    print(f"Left out by the {s['layout']} layout: {len(s['left_out'])} Flax "
          f"variables ({', '.join(s['left_out'][:4])}, ...).")
  print(f"PyTorch numerics for the same outputs: "
        f"{_numerics_line(s['numerics'])}")
  if s["torch_model"] and not s["out"].endswith(".npz"):
    name, kwargs = s["torch_model"]
    if s["out"].endswith(".safetensors"):
      imports = "  from safetensors.torch import load_file\n"
      load = f"load_file({s['out']!r})"
    else:
      imports = "  import torch\n"
      load = f"torch.load({s['out']!r})"
    print("Load it into jaxattn's PyTorch twin (or the authors' module):\n"
          f"{imports}"
          "  from jaxattn.torch_models import create_torch_model\n"
          f"  model = create_torch_model({name!r}, **{kwargs!r}).eval()\n"
          f"  model.load_state_dict({load}, strict=True)")


def _export(args) -> None:
  from jaxattn.convert import export  # pylint: disable=g-import-not-at-top
  step = args.step
  if step is not None and step.isdigit():
    step = int(step)
  s = export.export_run(args.path, args.out, step=step,
                        batch_size=args.batch_size, overwrite=args.overwrite)
  shape = lambda dims: "[" + ", ".join(map(str, dims)) + "]"
  print(f"Wrote {s['out']} ({s['num_bytes']:,} bytes): model {s['model']}, "
        f"step {s['step']}, {s['dtype']}{shape(s['input_shape'])} "
        f"{s['input_layout']} images -> logits "
        f"{s['output_dtype']}{shape(s['output_shape'])}, for "
        f"{', '.join(s['platforms'])}; its description in {s['sidecar']}.")
  p = s["preprocessing"]
  size = f"{p['image_size'][0]}x{p['image_size'][1]}"
  resize = (f"resized to cover {size} / {p['eval_crop_fraction']:g} and "
            f"centre-cropped to {size}" if p["eval_crop_fraction"]
            else f"resized to {size}")
  print(f"Preprocess images as evaluation does: {resize}, / 255, then "
        f"(x - {p['pixel_mean']}) / {p['pixel_std']} "
        "(jaxattn.inference.read_images does it for image files).")
  print("Call it (jax alone, no jaxattn):\n"
        "  import jax\n"
        f"  exported = jax.export.deserialize(bytearray(open({s['out']!r}, "
        "'rb').read()))\n"
        "  logits = exported.call(images)")


def _from_torch(args, overrides) -> None:
  from jaxattn.convert import commands  # pylint: disable=g-import-not-at-top
  try:
    config = commands.load_config_file(args.config, overrides)
  except (ValueError, TypeError) as e:
    if isinstance(e, ConversionError):
      raise
    raise ConversionError(f"--config={args.config}: {e}") from None
  record = commands.from_torch(args.file, config, args.out,
                               layout=args.layout, overwrite=args.overwrite,
                               config_spec=args.config)
  out = os.path.abspath(args.out)
  print(f"Wrote {out}/variables.npz: {len(record['loaded'])} variables from "
        f"{record['source']} (layout {record['layout']}), and "
        f"{out}/conversion.json.")
  if record["kept_at_init"]:
    print(f"Kept at their initialisation: {len(record['kept_at_init'])} "
          f"variables ({', '.join(record['kept_at_init'][:4])}, ...).")
  ignored = [k for k in record["ignored_source_keys"]
             if not k.endswith("num_batches_tracked")]
  if ignored:
    print(f"Ignored from the file: {', '.join(ignored)}.")
  for line in record["resized"]:
    print(f"Resized {line}.")
  print(f"Train from it: python main.py --config={args.config} --workdir=DIR "
        f"--config.init_from={out}")


def main(argv: list[str] | None = None) -> int:
  from absl import logging  # pylint: disable=g-import-not-at-top
  parser = _parser()
  args, extra = parser.parse_known_args(argv)
  if args.library_logs:
    if _QUIETED_TENSORFLOW:
      console.unquiet_tensorflow()
    logging.use_absl_handler()  # No app.run here to install it.
    logging.set_verbosity(logging.INFO)
  else:
    logging.set_verbosity(logging.ERROR)  # Orbax's read-only notices.
  console.configure_logging(library_logs=args.library_logs)
  overrides = {}
  if args.command == "from-torch":
    overrides = _config_overrides(extra, parser)
  elif extra:
    parser.error(f"unrecognized arguments: {' '.join(extra)}")
  try:
    if args.command == "layouts":
      _print_layouts(args.model)
    elif args.command == "to-torch":
      _to_torch(args)
    elif args.command == "export":
      _export(args)
    else:
      _from_torch(args, overrides)
  except errors.BadInputError as e:  # ConversionError, CheckpointError, ...
    if args.traceback:
      raise
    console.report(e)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
