"""Loading an official vit_jax / big_vision ``.npz`` into ``ViTBackbone``.

The checkpoints' keys are the '/'-joined parameter paths of
``backbone.ViTBackbone`` (its docstring lists them). ``load_vit_npz`` reads
a file, ``vit_params_from_arrays`` matches arrays already read (what
``HybridInterface.import_npz`` gets); both report every missing, unexpected
and mis-shaped tensor at once, with hints for the usual mistakes (an
ImageNet-21k checkpoint, another resolution or model size), and can resize
the positional embedding's patch grid as vit_jax does for fine-tuning.
"""

from collections.abc import Mapping
import os
from typing import Any

from flax import traverse_util
import numpy as np

from jaxattn import weights

PyTree = Any

_POSEMB = "Transformer/posembed_input/pos_embedding"


def _mismatch_hints(target: Mapping, mismatch: weights.Mismatch) -> list[str]:
  top = lambda key: key.split("/")[0]
  hints = []
  if set(target) & {"params", "backbone", "fusion"}:
    hints.append("target_params looks like a variables dict or a Hybrid's "
                 "params; pass variables['params'] of a ViTBackbone, or "
                 "params['backbone'] of a Hybrid.")
  if any(top(k) == "pre_logits" for k in mismatch.unexpected):
    hints.append("The checkpoint has a 'pre_logits' layer: it is an "
                 "ImageNet-21k pre-training checkpoint; use an ImageNet-1k "
                 "fine-tuned one (its name ends in '--imagenet2012-...').")
  if any(top(w.key) == "head" for w in mismatch.wrong):
    hints.append("The head sizes differ: set ViTBackbone.num_outputs to the "
                 "checkpoint's class count (1000 for the authors' hub layer).")
  if any(w.key == _POSEMB for w in mismatch.wrong):
    hints.append("The positional embeddings differ: pass resize_posemb=True "
                 "or build the model at the checkpoint's resolution.")
  if mismatch.missing or len(mismatch.wrong) > 1:
    hints.append("Check patch_size, hidden_dim, depth, num_heads and mlp_dim "
                 "against the checkpoint's name (B_8: 8, 768, 12, 12, 3072).")
  return [f"Hint: {h}" for h in hints]


def load_vit_npz(path: str | os.PathLike, target_params: PyTree, *,
                 resize_posemb: bool = True) -> dict:
  """Reads a vit_jax / big_vision ``.npz`` into ``ViTBackbone`` params.

  Args:
    path: the ``.npz`` (keys are '/'-joined parameter paths). Only read.
    target_params: the param tree (real arrays or ``jax.eval_shape``'s
      ``ShapeDtypeStruct``s) of the ViTBackbone to load into, e.g.
      ``variables["params"]`` or ``Hybrid``'s ``params["backbone"]``.
    resize_posemb: if only the positional embedding's token count differs,
      resize its patch grid as vit_jax does for fine-tuning at another
      resolution.

  Returns:
    A nested dict with the target's structure holding host NumPy arrays in the
    target's dtypes.

  Raises:
    weights.WeightMismatchError (a ValueError): listing every missing key,
      unexpected key and shape mismatch.
  """
  with np.load(path, allow_pickle=False) as npz:
    stored = {k: np.asarray(npz[k]) for k in npz.files}
  return vit_params_from_arrays(stored, target_params, source=os.fspath(path),
                                resize_posemb=resize_posemb)


def vit_params_from_arrays(stored: Mapping[str, np.ndarray],
                           target_params: PyTree, *, source: str,
                           resize_posemb: bool = True) -> dict:
  """``load_vit_npz`` on a file already read: {'/'-joined key: array}."""
  target = traverse_util.flatten_dict(target_params, sep="/")
  return traverse_util.unflatten_dict(weights.match_arrays(
      target, stored,
      resize=((_POSEMB, weights.resize_posemb_hook),) if resize_posemb else (),
      header=(f"Checkpoint {source!r} does not match the model's "
              f"parameters ({len(stored)} checkpoint tensors, {len(target)} "
              "model parameters)."),
      hints=lambda mismatch: _mismatch_hints(target_params, mismatch),
      stored_in="checkpoint"), sep="/")
