"""Matching stored tensors to a model's variables: the one place that compares
key sets and shapes and reports every mismatch at once.

Keys are strings compared as they are: '/'-joined Flax paths
(``traverse_util.flatten_dict(tree, sep="/")``) or PyTorch state_dict keys.
Every loader (``pretrained.load``, ``hybrid.load_vit_npz``, the converter's
``Plan.from_torch``) goes through ``match_arrays`` so that a file that does not
fit names all its problems in one error, in one wording.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxattn.errors import BadInputError

# A resize hook: (stored array, the model's shape) -> array, ideally of that
# shape. One that cannot resize raises ValueError (its message joins the
# report) or returns the array unchanged (the shape check reports it).
Resizer = Callable[[np.ndarray, tuple[int, ...]], np.ndarray]


class WeightMismatchError(BadInputError, ValueError):
  """Stored tensors that do not fit the model; ``mismatch`` says how."""

  def __init__(self, message: str, mismatch: Mismatch):
    super().__init__(message)
    self.mismatch = mismatch


@dataclasses.dataclass(frozen=True)
class WrongShape:
  key: str
  stored: tuple[int, ...]
  model: tuple[int, ...]
  why: str = ""  # A resize hook's error, if one tried.


@dataclasses.dataclass(frozen=True)
class Mismatch:
  """Everything that keeps stored tensors from loading, in natural order."""
  missing: list[str]  # In the model, not stored, not kept at init.
  unexpected: list[str]  # Stored, not in the model.
  stale: list[str]  # Allowed to be absent (kept at init), not in the model.
  wrong: list[WrongShape]

  def __bool__(self) -> bool:
    return bool(self.missing or self.unexpected or self.stale or self.wrong)


def natural_key(key: str):
  """'layer1.10.x' after 'layer1.9.x': digit runs compare as numbers."""
  return [(0, int(t), "") if t.isdigit() else (1, 0, t)
          for t in re.split(r"(\d+)", key)]


def key_listing(names: Iterable[str], limit: int = 40) -> str:
  """Indented lines naming the keys of a mismatch report (at most `limit`)."""
  names = list(names)
  text = "".join(f"\n    {n}" for n in names[:limit])
  return text + (f"\n    ... and {len(names) - limit} more"
                 if len(names) > limit else "")


def _shape(target) -> tuple[int, ...]:
  """A target is an array, a ``ShapeDtypeStruct`` or a bare shape."""
  return tuple(int(d) for d in getattr(target, "shape", target))


def match_arrays(
    target: Mapping[str, Any], stored: Mapping[str, np.ndarray], *,
    kept_at_init: Collection[str] = (),
    resize: Sequence[tuple[str, Resizer]] = (),
    header: str = "The file does not fit the model.",
    hints: Callable[[Mismatch], Sequence[str]] = lambda mismatch: (),
    stored_in: str = "file") -> dict[str, np.ndarray]:
  """The stored arrays of every key both sides have, in the targets' dtypes.

  Args:
    target: the model's {key: array, ``ShapeDtypeStruct`` or shape}; shapes
      alone are returned as stored (no dtype to cast to).
    stored: the file's {key: array}.
    kept_at_init: target keys the file may leave out (they keep their
      initialisation; the caller fills them in).
    resize: (regex, hook) pairs; a key whose shapes differ goes through the
      hook of the first pattern it fully matches.
    header: the error's first line (which file, which model, how many keys).
    hints: lines to end the error with, given what went wrong.
    stored_in: what the file is called in the report ("file", "checkpoint").

  Raises:
    WeightMismatchError: listing every missing, unexpected, stale and
      mis-shaped key, with counts.
  """
  kept = set(kept_at_init)
  ordered = lambda keys: sorted(keys, key=natural_key)
  matched, wrong = {}, []
  for key in ordered(set(stored) & set(target)):
    array, want, why = np.asarray(stored[key]), _shape(target[key]), ""
    hooks = [hook for pattern, hook in resize if re.fullmatch(pattern, key)]
    if array.shape != want and hooks:
      try:
        array = np.asarray(hooks[0](array, want))
      except ValueError as e:  # e.g. a grid that is not square
        why = f" ({e})"
    if array.shape != want:
      wrong.append(WrongShape(key, tuple(np.shape(stored[key])), want, why))
      continue
    dtype = getattr(target[key], "dtype", None)
    matched[key] = array if dtype is None else array.astype(dtype, copy=False)
  mismatch = Mismatch(missing=ordered(set(target) - set(stored) - kept),
                      unexpected=ordered(set(stored) - set(target)),
                      stale=ordered(kept - set(target)), wrong=wrong)
  if mismatch:
    raise WeightMismatchError(_report(mismatch, header, hints(mismatch),
                                      stored_in), mismatch)
  return matched


def _report(mismatch: Mismatch, header: str, hints: Sequence[str],
            stored_in: str) -> str:
  sections = (
      (f"Missing from the {stored_in}", mismatch.missing),
      (f"Unexpected in the {stored_in}", mismatch.unexpected),
      ("Listed as kept at init but not in the model", mismatch.stale),
      ("Shape mismatches", [f"{w.key}: {stored_in} {w.stored}, model "
                            f"{w.model}{w.why}" for w in mismatch.wrong]))
  lines = [header]
  lines += [f"  {title} ({len(keys)}):{key_listing(keys)}"
            for title, keys in sections if keys]
  return "\n".join([*lines, *hints])


def init_from_header(init_from: str, model: str, source: str,
                     num_stored: int, num_model: int) -> str:
  """The first line of a report on a ``config.init_from`` that does not fit."""
  return (f"config.init_from={init_from!r} does not fit model {model!r} "
          f"({num_stored} variables in {source}, {num_model} in the model).")


def resize_posemb(posemb: np.ndarray, num_tokens: int) -> np.ndarray:
  """vit_jax's fine-tuning resize: keep the class row, zoom the grid bilinearly.

  Same as ``vit_jax.checkpoint.load_pretrained``: ``scipy.ndimage.zoom`` with
  order 1 over a square grid.
  """
  import scipy.ndimage  # pylint: disable=g-import-not-at-top
  tok, grid = posemb[:, :1], posemb[0, 1:]
  gs_old, gs_new = math.isqrt(grid.shape[0]), math.isqrt(num_tokens - 1)
  if gs_old**2 != grid.shape[0] or gs_new**2 != num_tokens - 1:
    raise ValueError(
        f"Cannot resize the positional embedding from {posemb.shape[1]} to "
        f"{num_tokens} tokens: both must be 1 class token plus a square patch "
        f"grid. Build the model on square images.")
  grid = grid.reshape(gs_old, gs_old, -1)
  zoom = (gs_new / gs_old, gs_new / gs_old, 1)
  grid = scipy.ndimage.zoom(grid, zoom, order=1).reshape(1, gs_new * gs_new, -1)
  return np.concatenate([tok, grid], axis=1)


def resize_posemb_hook(posemb: np.ndarray,
                       shape: tuple[int, ...]) -> np.ndarray:
  """``resize_posemb`` as a ``Resizer`` for [1, tokens, D] embeddings.

  Only the token count may differ; anything else comes back unchanged, for
  the shape check to report.
  """
  if (posemb.ndim != 3 or len(shape) != 3 or posemb.shape[0] != 1 or
      shape[0] != 1 or posemb.shape[2] != shape[2]):
    return posemb
  return resize_posemb(posemb, shape[1])
