"""Reading and writing state_dict files: .safetensors, .pt/.pth/.bin, .npz.

Reading returns ``{key: np.ndarray}`` whatever the format, and turns every
way a file can be unreadable (missing, truncated, corrupt, a pickled module
instead of a state_dict) into a ``ConversionError`` that names the file and
the fix. Writing never replaces an existing file unless asked, and goes
through a temporary file and a rename, so an interrupted write leaves no
half file behind.
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from collections.abc import Mapping

import numpy as np

from jaxattn.convert.plan import ConversionError

SAFETENSORS = (".safetensors",)
TORCH = (".pt", ".pth", ".bin")
NPZ = (".npz",)
# Wrappers that training scripts put around a state_dict.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "params")


def kind_of(path: str) -> str:
  ext = os.path.splitext(path)[1].lower()
  if ext in SAFETENSORS:
    return "safetensors"
  if ext in NPZ:
    return "npz"
  return "torch"


def check_out_file(path: str, *, overwrite: bool,
                   example: str = "model.safetensors") -> None:
  """Fails before any work if ``path`` is a directory, exists (without
  ``overwrite``) or lies in a directory that does not exist; any extension."""
  if os.path.isdir(path):
    raise ConversionError(f"--out {path} is a directory; give a file name "
                          f"such as {example}.")
  if os.path.exists(path) and not overwrite:
    raise ConversionError(
        f"--out {path} already exists. Pass --overwrite to replace it, or "
        "choose another --out.")
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise ConversionError(f"--out {path}: directory {parent} does not exist.")


def check_writable(path: str, *, overwrite: bool) -> None:
  """Fails before any work if ``path`` exists (without ``overwrite``) or is
  not a state_dict file name (.safetensors, .pt/.pth/.bin, .npz)."""
  check_out_file(path, overwrite=overwrite)
  ext = os.path.splitext(path)[1].lower()
  if ext not in SAFETENSORS + TORCH + NPZ:
    raise ConversionError(
        f"--out {path}: unknown extension {ext or '(none)'!r}; use "
        ".safetensors (default choice), .pt / .pth / .bin (torch.save) or "
        ".npz (vit_jax layout).")


def _torch_to_numpy(tensor) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  if tensor.dtype in (torch.bfloat16, torch.float16):
    tensor = tensor.float()
  return tensor.detach().cpu().numpy()


def _unwrap(obj, path: str) -> tuple[dict, str]:
  """The state_dict inside what torch.load returned, and where it was."""
  import torch  # pylint: disable=g-import-not-at-top
  is_sd = lambda d: isinstance(d, Mapping) and d and all(
      isinstance(v, torch.Tensor) for v in d.values())
  if is_sd(obj):
    return dict(obj), ""
  if isinstance(obj, Mapping):
    for key in _WRAPPER_KEYS:
      if is_sd(obj.get(key)):
        return dict(obj[key]), key
    # Tensors mixed with other entries (optimizer step, ...): keep tensors.
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors and len(tensors) >= len(obj) // 2:
      return tensors, ""
    raise ConversionError(
        f"{path} holds a dict with keys {sorted(map(str, obj))[:20]}, not a "
        "state_dict of tensors. Save model.state_dict() (or pass the file "
        "that holds it).")
  raise ConversionError(
      f"{path} holds a {type(obj).__name__}, not a state_dict. Save "
      "model.state_dict() with torch.save or safetensors.")


def read_state_dict(path: str) -> tuple[dict[str, np.ndarray], dict]:
  """``({key: array}, info)`` of a .safetensors, torch.save or .npz file."""
  if not os.path.isfile(path):
    raise ConversionError(f"{path} does not exist (or is not a file).")
  kind = kind_of(path)
  info = {"format": kind, "wrapper": ""}
  fix = ("It may be truncated or corrupt (an interrupted download or copy): "
         "download or export it again.")
  if kind == "safetensors":
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    try:
      out = {}
      with safe_open(path, "np") as f:
        info["metadata"] = dict(f.metadata() or {})
        for key in f.keys():
          out[key] = f.get_tensor(key)
      return out, info
    except TypeError:  # bfloat16 has no NumPy dtype: read through torch.
      from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
      try:
        return {k: _torch_to_numpy(v) for k, v in load_file(path).items()}, info
      except Exception as e:  # pylint: disable=broad-except
        raise ConversionError(f"{path} is not a readable .safetensors file "
                              f"({e}). {fix}") from None
    except Exception as e:  # pylint: disable=broad-except
      raise ConversionError(f"{path} is not a readable .safetensors file "
                            f"({type(e).__name__}: {e}). {fix}") from None
  if kind == "npz":
    try:
      with np.load(path, allow_pickle=False) as npz:
        return {k: np.asarray(npz[k]) for k in npz.files}, info
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
      raise ConversionError(f"{path} is not a readable .npz file "
                            f"({type(e).__name__}: {e}). {fix}") from None
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConversionError(
        f"Reading {path} needs PyTorch: pip install -e '.[torch]' (or "
        "convert the file to .safetensors elsewhere).") from None
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    text = str(e)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:  # weights_only refused a class: a pickled object.
      raise ConversionError(
          f"{path} is a pickled {found.group(1)}, not a plain state_dict. In "
          "PyTorch, save model.state_dict() instead of the model, then "
          "convert that file.") from None
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    text = detail.group(1) if detail else (text.splitlines() or [""])[0]
    raise ConversionError(f"{path} is not a readable PyTorch checkpoint "
                          f"({type(e).__name__}: {text.strip()}). {fix}"
                          ) from None
  sd, info["wrapper"] = _unwrap(obj, path)
  return {k: _torch_to_numpy(v) for k, v in sd.items()}, info


def _umask() -> int:
  """The process's umask. os.umask only reads it by setting it, so it is set
  straight back."""
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def atomic_write(path: str, write) -> None:
  """``write(tmp)`` into a temporary file beside ``path``, then a rename.

  The file gets the permissions of any file the user creates (0644 under
  umask 022), not mkstemp's private 0600: a converted checkpoint is meant to
  be read by others (a shared model directory, a serving account).
  """
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path),
                             dir=directory)
  os.close(fd)
  try:
    write(tmp)
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_state_dict(state_dict: Mapping[str, np.ndarray], path: str, *,
                     metadata: Mapping[str, str] | None = None,
                     overwrite: bool = False) -> None:
  """Writes by extension: .safetensors (with ``metadata``), .pt/.pth/.bin
  (``torch.save`` of an ordered dict of tensors) or .npz."""
  check_writable(path, overwrite=overwrite)
  ext = os.path.splitext(path)[1].lower()
  if ext in SAFETENSORS:
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    atomic_write(path, lambda tmp: save_file(
        dict(state_dict), tmp, metadata=dict(metadata or {})))
  elif ext in NPZ:
    def write_npz(tmp):
      with open(tmp, "wb") as f:
        np.savez(f, **state_dict)
    atomic_write(path, write_npz)
  else:
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ConversionError(
          f"Writing {path} needs PyTorch (pip install -e '.[torch]'); "
          ".safetensors files need only the safetensors package.") from None
    import collections  # pylint: disable=g-import-not-at-top
    sd = collections.OrderedDict(
        (k, torch.from_numpy(np.array(v))) for k, v in state_dict.items())
    atomic_write(path, lambda tmp: torch.save(sd, tmp))
