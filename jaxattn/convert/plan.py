"""A layout applied to one model's variables: the list of tensors to move.

``make_plan(layout, flax_shapes)`` matches every rule of the layout against
the Flax tree and returns a ``Plan``: one ``Entry`` per PyTorch tensor, with
the Flax leaves it is made of and the tensor rule between them. The plan
converts both ways (``to_torch``, ``from_torch``) and checks every shape;
``from_torch`` reports every missing, unexpected and mis-shaped key at once.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import numpy as np

from jaxattn import weights
from jaxattn.convert import rules as rules_lib
from jaxattn.convert.rules import FlaxKey, Layout
from jaxattn.errors import BadInputError
from jaxattn.weights import key_listing, natural_key

DATA_PARALLEL_PREFIX = "module."
GENERIC_HINT = "the architectures differ:"
# The classifiers' keys in the default layouts (their size is num_classes).
CLASSIFIER_KEYS = (r"(fc(\.\d)?|output_layer|mlp_head\.3|(fusion\.)?\w+_logits|17)"
                   r"\.(weight|bias)")


class ConversionError(BadInputError, ValueError):
  """A checkpoint that cannot be converted, with what to do about it."""


@dataclasses.dataclass(frozen=True)
class Entry:
  torch_key: str
  flax_keys: tuple[FlaxKey, ...]
  rule: rules_lib.TensorRule
  torch_shape: tuple[int, ...]


def flax_name(key: FlaxKey) -> str:
  return "/".join(key)


@dataclasses.dataclass
class Plan:
  layout: Layout
  entries: list[Entry]
  unmapped: list[FlaxKey]  # Flax leaves the (partial) layout leaves out.
  flax_shapes: dict[FlaxKey, tuple[int, ...]]

  @property
  def torch_shapes(self) -> dict[str, tuple[int, ...]]:
    return {e.torch_key: e.torch_shape for e in self.entries}

  def to_torch(self, flat: Mapping[FlaxKey, np.ndarray]
               ) -> dict[str, np.ndarray]:
    """Flax leaves -> {PyTorch key: array}, in natural key order."""
    out = {}
    for e in self.entries:
      tensor = np.asarray(  # order="C" keeps 0-d tensors 0-d.
          e.rule.to_torch([np.asarray(flat[k]) for k in e.flax_keys]),
          order="C")
      if not tensor.flags.writeable:  # torch.from_numpy wants writable.
        tensor = tensor.copy()
      if tensor.shape != e.torch_shape:  # A bug in a rule, never the data.
        raise AssertionError(f"{e.torch_key}: {tensor.shape} != "
                             f"{e.torch_shape}")
      out[e.torch_key] = tensor
    return out

  def from_torch(self, state_dict: Mapping[str, np.ndarray], *,
                 source: str = "the file") -> tuple[dict[FlaxKey, np.ndarray],
                                                     dict]:
    """{PyTorch key: array} -> (Flax leaves, report), every key checked.

    The report says which keys were ignored (``num_batches_tracked``, the
    layout's ``ignore_on_import``), stripped (a DataParallel ``module.``
    prefix) or resized. Raises ``ConversionError`` listing all missing,
    unexpected and mis-shaped keys.
    """
    layout = self.layout
    report = {"stripped_prefix": "", "ignored": [], "resized": []}
    sd = dict(state_dict)
    num_given = len(sd)
    expected = {e.torch_key: e for e in self.entries}
    if (sd and all(k.startswith(DATA_PARALLEL_PREFIX) for k in sd) and
        not any(k.startswith(DATA_PARALLEL_PREFIX) for k in expected)):
      sd = {k[len(DATA_PARALLEL_PREFIX):]: v for k, v in sd.items()}
      report["stripped_prefix"] = DATA_PARALLEL_PREFIX
    for key in sorted(sd, key=natural_key):
      optional = key in expected and not expected[key].flax_keys
      if optional or (key not in expected and any(
          re.fullmatch(p, key) for p in layout.ignore_on_import)):
        report["ignored"].append(key)
        del sd[key]
    required = {k: e for k, e in expected.items() if e.flax_keys}
    try:
      matched = weights.match_arrays(
          {k: e.torch_shape for k, e in required.items()}, sd,
          resize=layout.resize,
          header=(f"{source} does not fit the model in layout {layout.name!r} "
                  f"({num_given} tensors in the file, {len(self.entries)} in "
                  "the layout)."),
          hints=_mismatch_hints)
    except weights.WeightMismatchError as e:
      raise ConversionError(str(e)) from None
    report["resized"] = [f"{k}: {np.shape(sd[k])} -> {v.shape}"
                         for k, v in matched.items()
                         if np.shape(sd[k]) != v.shape]
    flat = {}
    for key, e in required.items():
      parts = e.rule.to_flax(matched[key],
                             [self.flax_shapes[k] for k in e.flax_keys])
      for k, part in zip(e.flax_keys, parts):
        flat[k] = np.asarray(part, np.float32, order="C")
    return flat, report


def _mismatch_hints(mismatch: weights.Mismatch) -> list[str]:
  only_wrong = not mismatch.missing and not mismatch.unexpected
  if mismatch.wrong and only_wrong and all(
      re.fullmatch(CLASSIFIER_KEYS, w.key) for w in mismatch.wrong):
    return ["Hint: only the classifier's size differs: set the number of "
            "classes to the file's (--config.num_classes=K, or the config's "
            "argument)."]
  if mismatch.missing or mismatch.wrong:
    return [f"Hint: {GENERIC_HINT} check that --config builds the same model "
            "as the file (depth, width, patch size, image size, attention "
            "block, head)."]
  return []


def make_plan(layout: Layout, flax_shapes: Mapping[FlaxKey, Sequence[int]]
              ) -> Plan:
  """Matches the layout's rules against the Flax leaves (full keys)."""
  shapes = {tuple(k): tuple(int(d) for d in v) for k, v in flax_shapes.items()}
  modules: dict[str, list[FlaxKey]] = {}  # module path -> leaves below it
  for key in shapes:
    path = key[1:]
    for i in range(len(path)):
      modules.setdefault("/".join(path[:i]), []).append(key)
  claimed: dict[FlaxKey, str] = {}
  entries: list[Entry] = []
  for rule in layout.rules:
    for module in sorted(modules):
      match = re.fullmatch(rule.flax, module)
      if not match:
        continue
      prefix = match.expand(rule.torch)
      base = tuple(module.split("/")) if module else ()
      below = [(k[0], *k[1 + len(base):]) for k in modules[module]]
      slots = rule.kind.slots(below)
      found = []
      for slot in slots:
        keys = tuple((c, *base, *rel) for c, *rel in slot.flax)
        present = [k in shapes for k in keys]
        if keys and not any(present):
          if not slot.optional:
            found.append((slot, None))
          continue
        if not all(present):
          raise ConversionError(
              f"Layout {layout.name!r}: module {module!r} has only some of "
              f"{[flax_name(k) for k in keys]}; the model and the rule "
              f"{rule.flax!r} ({rule.kind}) disagree.")
        found.append((slot, keys))
      if all(keys is None for s, keys in found if s.flax):
        continue  # Matched a module of another kind (no leaves of this one).
      for slot, keys in found:
        if keys is None:
          wanted = [flax_name((c, *base, *rel)) for c, *rel in slot.flax]
          raise ConversionError(
              f"Layout {layout.name!r}: module {module!r} matches rule "
              f"{rule.flax!r} ({rule.kind}) but has no {wanted}.")
        for k in keys:
          if k in claimed:
            raise ConversionError(
                f"Layout {layout.name!r}: {flax_name(k)} is claimed by "
                f"{claimed[k]} and {layout.join(prefix, slot.torch)}.")
          claimed[k] = layout.join(prefix, slot.torch)
        torch_shape = tuple(slot.rule.torch_shape([shapes[k] for k in keys]))
        entries.append(Entry(layout.join(prefix, slot.torch), keys,
                             slot.rule, torch_shape))
  unmapped = sorted(set(shapes) - set(claimed))
  if unmapped and not layout.partial:
    raise ConversionError(
        f"Layout {layout.name!r} has no rule for these Flax variables "
        f"({len(unmapped)}):{key_listing([flax_name(k) for k in unmapped])}\n"
        "Is the checkpoint from another model than the layout's?")
  torch_keys = [e.torch_key for e in entries]
  if len(set(torch_keys)) != len(torch_keys):
    dupes = sorted({k for k in torch_keys if torch_keys.count(k) > 1})
    raise ConversionError(f"Layout {layout.name!r} maps several Flax "
                          f"variables to {dupes}.")
  entries.sort(key=lambda e: natural_key(e.torch_key))
  return Plan(layout, entries, unmapped, shapes)
