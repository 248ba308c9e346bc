"""Pretrained weights by name: ``config.init_from=KIND:NAME``.

Names and what they download::

  augreg:NAME          https://storage.googleapis.com/vit_models/augreg/NAME.npz
                       (any AugReg ViT, e.g. seed 000's ViT-B/8 ``AUGREG_B8``)
  torchvision:resnet50 https://download.pytorch.org/models/resnet50-19c8e357.pth
  torchvision:resnet101, torchvision:resnet152 (the legacy ImageNet files
                       seed 001's authors loaded with pretrained=True)

A name downloads once into the cache (``~/.cache/jaxattn/weights``, or
``$JAXATTN_WEIGHTS_CACHE``) with pooch and a progress bar. The bytes go to
``FILE.part`` first: an interrupted download resumes from there with an HTTP
Range request, and only a file that passed its checks (torchvision's sha256
prefix, a readable file holding the keys and shapes the name stands for) is
renamed to ``FILE``; a file that fails them is deleted. A torchvision file is
then converted once with ``jaxattn.convert.from_torch`` for the run's model
(cached under ``converted/``). ``pretrained.load`` checks the result against
the model as for any path.

``$JAXATTN_WEIGHTS_URL`` replaces the public hosts with a mirror laid out as
``BASE/KIND/FILE`` (``BASE/augreg/NAME.npz``,
``BASE/torchvision/resnet50-19c8e357.pth``); the tests serve one on
127.0.0.1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import shutil
from collections.abc import Callable

import ml_collections
import numpy as np
from absl import logging

from jaxattn.errors import BadInputError

CACHE_ENV = "JAXATTN_WEIGHTS_CACHE"
URL_ENV = "JAXATTN_WEIGHTS_URL"
DEFAULT_CACHE = os.path.join("~", ".cache", "jaxattn", "weights")
PART_SUFFIX = ".part"
# Bytes written per step: a dropped connection loses at most the chunk it
# was receiving (requests yields only whole chunks).
CHUNK_BYTES = 1 << 16
# Seed 000's frozen backbone: AugReg ViT-B/8, i21k pretrained, ImageNet
# fine-tuned at 224 px (shared/specs/seeds.md).
AUGREG_B8 = ("augreg:B_8-i21k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0"
             "--imagenet2012-steps_20k-lr_0.01-res_224")

Shapes = dict[str, tuple[int, ...]]


class WeightsError(BadInputError, OSError):
  """A name that cannot be resolved, downloaded or trusted; says the fix."""


@dataclasses.dataclass(frozen=True)
class Entry:
  """One downloadable file: where it lives and how to recognise it."""
  kind: str
  name: str
  file: str  # The file name on the server and in the cache.
  base_url: str  # The public host; $JAXATTN_WEIGHTS_URL replaces it.
  # The start of the file's sha256 (torchvision names end in its first 8
  # hex digits); None where nobody published one (AugReg).
  sha256_prefix: str | None = None
  # {key: shape} the file must hold exactly (keys, shapes and so the
  # parameter count); None: only that it reads as its format.
  expect: Callable[[], Shapes] | None = None

  @property
  def spec(self) -> str:
    return f"{self.kind}:{self.name}"

  @property
  def url(self) -> str:
    mirror = os.environ.get(URL_ENV, "").rstrip("/")
    if mirror:
      return f"{mirror}/{self.kind}/{self.file}"
    return f"{self.base_url}/{self.file}"

  @property
  def is_torch(self) -> bool:
    return not self.file.endswith(".npz")


# --------------------------------------------------------------------------
# What each name must contain, from the project's own definitions.
# --------------------------------------------------------------------------


def torchvision_resnet_shapes(**arch) -> Shapes:
  """torchvision's ResNet state_dict {key: shape} (no num_batches_tracked,
  which the legacy files predate), from the plain-PyTorch twin built on the
  meta device (no memory)."""
  import torch  # pylint: disable=g-import-not-at-top
  from jaxattn.torch_models import create_torch_model  # pylint: disable=g-import-not-at-top
  with torch.device("meta"):
    model = create_torch_model("slresnet", attention="none", head="linear",
                               **arch)
  return {k: tuple(v.shape) for k, v in model.state_dict().items()
          if not k.endswith("num_batches_tracked")}


# AugReg ViT sizes (hidden, depth, heads, mlp), as in the AugReg paper.
_VIT_SIZES = {"Ti": (192, 12, 3, 768), "S": (384, 12, 6, 1536),
              "B": (768, 12, 12, 3072), "L": (1024, 24, 16, 4096)}
_AUGREG_NAME = re.compile(
    r"(?P<size>Ti|S|B|L)_(?P<patch>8|16|32)-(?P<pre>i21k|i1k)-[^-]+"
    r"(-[^-]+)*?(--imagenet2012-.*-res_(?P<res>\d+))?")


def augreg_shapes(name: str) -> Shapes | None:
  """The vit_jax {key: shape} of a plain-ViT AugReg name, or None where the
  name is not one (R+ViT hybrids, fine-tunes on other datasets)."""
  m = _AUGREG_NAME.fullmatch(name)
  if not m:
    return None
  import jax  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from jaxattn.models import hybrid  # pylint: disable=g-import-not-at-top
  hidden, depth, heads, mlp = _VIT_SIZES[m["size"]]
  res = int(m["res"] or 224)
  classes = 21843 if m["pre"] == "i21k" and not m["res"] else 1000
  model = hybrid.ViTBackbone(patch_size=int(m["patch"]), hidden_dim=hidden,
                             depth=depth, num_heads=heads, mlp_dim=mlp,
                             num_outputs=classes)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, res, res, 3), np.float32))
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(
      shapes["params"], sep="/").items()}


_AUGREG_BASE = "https://storage.googleapis.com/vit_models/augreg"
_TORCHVISION_BASE = "https://download.pytorch.org/models"

# torchvision:NAME -> its file. Tests add small stand-ins here.
TORCHVISION: dict[str, Entry] = {
    f"resnet{depth}": Entry(
        "torchvision", f"resnet{depth}", f"resnet{depth}-{sha}.pth",
        _TORCHVISION_BASE, sha256_prefix=sha,
        expect=lambda depth=depth: torchvision_resnet_shapes(depth=depth))
    for depth, sha in ((50, "19c8e357"), (101, "5d3b4d8f"),
                       (152, "b121ed2d"))
}
KINDS = {
    "augreg": "any AugReg ViT name (a file NAME.npz in "
              f"{_AUGREG_BASE}/), e.g. {AUGREG_B8}",
    "torchvision": "torchvision:" + "|".join(TORCHVISION),
}
# A file name in the bucket: no '/', nothing that walks out of the cache.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]*")


def known_names() -> str:
  return "; ".join(f"{k}: {v}" for k, v in KINDS.items())


def is_name(init_from: str) -> bool:
  """``KIND:NAME`` that is not an existing path (a path stays a path)."""
  return bool(re.match(r"[A-Za-z][\w-]+:(?!//)", init_from or "")
              ) and not os.path.exists(init_from)


def lookup(init_from: str) -> Entry:
  """The entry of a ``KIND:NAME``; an unknown kind or name lists the known."""
  kind, _, name = init_from.partition(":")
  if kind == "torchvision" and name in TORCHVISION:
    return TORCHVISION[name]
  if kind == "augreg" and _SAFE_NAME.fullmatch(name):
    return Entry("augreg", name, f"{name}.npz", _AUGREG_BASE,
                 expect=lambda: augreg_shapes(name))
  what = (f"unknown {kind} name {name!r}" if kind in KINDS
          else f"unknown kind {kind!r}")
  raise WeightsError(
      f"config.init_from={init_from!r} is neither an existing path nor a "
      f"known weights name ({what}). Known names: {known_names()}. Or pass the "
      "path of a local file.")


# --------------------------------------------------------------------------
# Download: pooch, resumed from FILE.part, checked before it gets its name.
# --------------------------------------------------------------------------


def cache_dir() -> str:
  return os.path.abspath(os.path.expanduser(
      os.environ.get(CACHE_ENV) or DEFAULT_CACHE))


def _manual_step(entry: Entry, path: str) -> str:
  return (f"Download {entry.url} yourself and put it at {path}, or pass "
          "--config.init_from=/your/file (an .npz, or the directory "
          "`python -m jaxattn.convert from-torch` writes from a .pth), or "
          "--config.init_from='' to start from random weights.")


def _read_shapes(entry: Entry, path: str) -> Shapes:
  """{key: shape} of the file; reading every array also checks the .npz's
  CRCs. Raises ValueError when it does not read as its format."""
  if entry.is_torch:
    from jaxattn.convert import files  # pylint: disable=g-import-not-at-top
    state_dict, _ = files.read_state_dict(path)  # ConversionError: ValueError
    return {k: tuple(np.shape(v)) for k, v in state_dict.items()
            if not k.endswith("num_batches_tracked")}
  try:
    with np.load(path, allow_pickle=False) as npz:
      return {k: tuple(npz[k].shape) for k in npz.files}
  except Exception as e:  # zipfile.BadZipFile, EOFError, OSError, ...
    raise ValueError(f"not a readable .npz ({type(e).__name__}: {e}); it may "
                     "be truncated or not the file that was asked for") from None


def verify(entry: Entry, path: str) -> None:
  """Raises ValueError unless ``path`` is the file ``entry`` names."""
  import pooch  # pylint: disable=g-import-not-at-top
  from jaxattn import weights  # pylint: disable=g-import-not-at-top
  if entry.sha256_prefix:
    digest = pooch.file_hash(path, alg="sha256")
    if not digest.startswith(entry.sha256_prefix):
      raise ValueError(f"its sha256 is {digest}, but {entry.file} names one "
                       f"starting {entry.sha256_prefix}")
  stored = _read_shapes(entry, path)
  expected = entry.expect() if entry.expect else None
  if expected is not None:
    count = lambda shapes: sum(int(np.prod(s)) for s in shapes.values())
    # Zero-byte stand-ins of the stored shapes: match_arrays compares keys
    # and shapes and reports every difference, no array is held in memory.
    weights.match_arrays(
        expected, {k: np.broadcast_to(np.float32(0), s)
                   for k, s in stored.items()},
        stored_in="download",
        header=(f"it holds {len(stored)} tensors / {count(stored):,} values; "
                f"{entry.spec} has {len(expected)} / {count(expected):,}:"))


class ResumingDownloader:
  """A pooch downloader: ``pooch.HTTPDownloader`` streaming into a stable
  ``FILE.part`` (pooch 1.9 cannot resume: it restarts into a fresh temporary
  file), with a Range request for what is already there, then ``verify``;
  only a verified file is handed to pooch, which moves it to ``FILE``."""

  def __init__(self, entry: Entry, part: str, progressbar=True):
    self.entry, self.part, self.progressbar = entry, part, progressbar

  def _get(self, url: str) -> None:
    import pooch  # pylint: disable=g-import-not-at-top
    import requests  # pylint: disable=g-import-not-at-top
    have = os.path.getsize(self.part) if os.path.exists(self.part) else 0
    with open(self.part, "ab") as out:

      def on_response(response, *args, **kwargs):
        del args, kwargs
        # A server that ignores Range sends the whole file (200): start over.
        if response.status_code == 200 and out.tell():
          out.seek(0)
          out.truncate()
        # One that resumes elsewhere would splice the file: start over next
        # time rather than append.
        content_range = response.headers.get("Content-Range", "")
        if (response.status_code == 206 and
            not content_range.startswith(f"bytes {have}-")):
          out.truncate(0)
          raise requests.RequestException(
              f"the server resumed at {content_range!r}, not at byte "
              f"{have}; the next run starts over")
        return response

      headers = {"Range": f"bytes={have}-"} if have else {}
      logging.info("Downloading %s from %s%s.", self.entry.spec, url,
                   f" (resuming after {have:,} bytes)" if have else "")
      pooch.HTTPDownloader(progressbar=self.progressbar, chunk_size=CHUNK_BYTES,
                           headers=headers,
                           hooks={"response": on_response})(url, out, None)

  def __call__(self, url: str, output_file: str, pooch_instance) -> None:
    import requests  # pylint: disable=g-import-not-at-top
    del pooch_instance
    try:
      self._get(url)
    except requests.HTTPError as e:
      # 416: the part already holds the whole file (a run stopped between
      # download and rename); fetch it again rather than guess.
      if e.response is None or e.response.status_code != 416:
        raise
      os.remove(self.part)
      self._get(url)
    try:
      verify(self.entry, self.part)
    except ValueError:
      os.remove(self.part)  # Never resumed from, never used.
      raise
    os.replace(self.part, output_file)


@contextlib.contextmanager
def _lock(path: str):
  """One download per file at a time across processes (POSIX hosts)."""
  try:
    import fcntl  # pylint: disable=g-import-not-at-top
  except ImportError:
    yield
    return
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet(logger):
  """pooch logs, for known_hash=None, advice to pin the file's hash in a
  pooch.retrieve call, which means nothing to a user of this module."""
  level = logger.level
  logger.setLevel("WARNING")
  try:
    yield
  finally:
    logger.setLevel(level)


# (path, mtime, size) of cached files verified by this process: a run
# resolves its name twice (check, then load), and hashes it once.
_VERIFIED: set[tuple[str, float, int]] = set()
REJECTED_SUFFIX = ".rejected"


def _check_cached(entry: Entry, path: str) -> None:
  """Verifies a cached file once per process: one put there by hand (the
  manual step of every download error) never went through the download's
  checks. A file that fails them is moved aside, never deleted (it may be
  the user's only copy), and never used."""
  stamp = (path, os.path.getmtime(path), os.path.getsize(path))
  if stamp in _VERIFIED:
    return
  try:
    verify(entry, path)
  except ValueError as e:
    os.replace(path, path + REJECTED_SUFFIX)
    raise WeightsError(
        f"The cached file {path} is not {entry.spec} ({entry.url}): {e}.\n"
        f"It was moved to {path + REJECTED_SUFFIX}; the next run downloads "
        f"the file again. {_manual_step(entry, path)}") from None
  _VERIFIED.add(stamp)


def fetch(entry: Entry, progressbar=True) -> str:
  """The cached file of ``entry``, downloaded (or resumed) and verified first
  if it is not there. Raises ``WeightsError``: one message with the URL, the
  cache path and the manual step."""
  import pooch  # pylint: disable=g-import-not-at-top
  import requests  # pylint: disable=g-import-not-at-top
  if progressbar is True:
    try:  # pooch draws its bar with tqdm (tensorflow-datasets brings it).
      import tqdm  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      progressbar = False
  directory = cache_dir()
  path = os.path.join(directory, entry.file)
  part = path + PART_SUFFIX
  if os.path.isfile(path):
    _check_cached(entry, path)
    return path
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    raise WeightsError(f"Cannot create the weights cache {directory} ({e}); "
                       f"set ${CACHE_ENV} to a writable directory.") from None
  with _lock(path + ".lock"), _quiet(pooch.get_logger()):
    try:
      # known_hash=None: pooch checks no hash (it has no prefix check) and
      # treats an existing FILE as complete; ResumingDownloader verifies.
      pooch.retrieve(
          entry.url, known_hash=None, fname=entry.file, path=directory,
          downloader=ResumingDownloader(entry, part, progressbar))
      _VERIFIED.add((path, os.path.getmtime(path), os.path.getsize(path)))
      return path
    except (requests.RequestException, ValueError, OSError) as e:
      if os.path.exists(part) and not os.path.getsize(part):
        os.remove(part)  # Nothing arrived (offline): nothing to resume.
      kept = (f"; the {os.path.getsize(part):,} bytes received are kept in "
              f"{part} and the next run resumes from them"
              if os.path.exists(part) else "")
      raise WeightsError(
          f"Could not get pretrained weights {entry.spec} from {entry.url} "
          f"into the cache at {path}: {_reason(e)}{kept}.\nNothing was "
          f"stored under that name. {_manual_step(entry, path)}") from None


def _reason(e: Exception) -> str:
  import requests  # pylint: disable=g-import-not-at-top
  if isinstance(e, requests.ConnectionError):
    return f"cannot connect (offline?): {e}"
  if isinstance(e, requests.HTTPError) and e.response is not None:
    return f"the server answered HTTP {e.response.status_code}"
  if isinstance(e, ValueError):
    return f"the download is not the file it names: {e}"
  return f"{type(e).__name__}: {e}"


# --------------------------------------------------------------------------
# config.init_from -> a local path pretrained.load reads.
# --------------------------------------------------------------------------


def converted_dir(entry: Entry, config: ml_collections.ConfigDict) -> str:
  """Where ``from_torch`` writes ``entry`` for this model. The conversion
  depends on the model, its class count, image size and channels; the
  dataset is in the key too, for configs whose count is still 0 ("the
  dataset's")."""
  model = config.model.to_dict() if hasattr(config.model, "to_dict") else (
      dict(config.model))
  key = json.dumps({"model": model, "dataset": config.get("dataset"),
                    "num_classes": config.get("num_classes"),
                    "image_size": list(config.image_size),
                    "num_channels": config.get("num_channels")},
                   sort_keys=True, default=str)
  digest = hashlib.sha256(key.encode()).hexdigest()[:12]
  name = f"{os.path.splitext(entry.file)[0]}--{config.model.name}-{digest}"
  return os.path.join(cache_dir(), "converted", name)


def _convert(entry: Entry, file: str, config: ml_collections.ConfigDict
             ) -> str:
  """``from_torch`` into a temporary directory renamed when complete, so a
  conversion cut short never looks done."""
  from jaxattn.convert import commands  # pylint: disable=g-import-not-at-top
  out = converted_dir(entry, config)
  if os.path.isdir(out):
    return out
  tmp = f"{out}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    commands.from_torch(file, config, tmp, layout="torchvision",
                        config_spec=f"init_from={entry.spec}")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    try:
      os.replace(tmp, out)
    except OSError:
      if not os.path.isdir(out):
        raise
      # Another process of the run converted it first: use theirs.
      shutil.rmtree(tmp, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out


def resolve(config: ml_collections.ConfigDict, progressbar=True) -> str:
  """``config.init_from`` as a local path: a path as given; a name
  downloaded (once) and, for a PyTorch file, converted (once)."""
  init_from = config.init_from
  if not is_name(init_from):
    return init_from
  entry = lookup(init_from)
  if entry.is_torch and importlib.util.find_spec("torch") is None:
    # Checked before downloading what could not be read.
    raise WeightsError(
        f"config.init_from={init_from!r} is a PyTorch file; reading and "
        "converting it needs PyTorch: pip install 'jaxattn[torch]' (or "
        "torch), or pass --config.init_from='' to start from random weights.")
  file = fetch(entry, progressbar)
  return _convert(entry, file, config) if entry.is_torch else file
