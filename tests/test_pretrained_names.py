"""config.init_from=KIND:NAME: download once, resume, check, convert, train.

Every file comes from a server on 127.0.0.1 that the tests start
($JAXATTN_WEIGHTS_URL points the names at it), never from the internet. It
counts requests, honours HTTP Range, and can be told to fail, to cut a
transfer short or to ignore Range.
"""

import hashlib
import http.server
import io
import os
import threading

import numpy as np
import pytest

from jaxattn import configlib, pretrained, train, weights_hub
from tests.conftest import REPO

TINY_RESNET = dict(depth=50, stage_sizes=(1, 1, 1, 1), width=8)


class _Handler(http.server.BaseHTTPRequestHandler):
  server: "_Server"

  def log_message(self, *args):  # Quiet test output.
    pass

  def do_GET(self):  # pylint: disable=invalid-name
    srv = self.server
    srv.seen.append((self.path, self.headers.get("Range")))
    if "fail" in srv.modes:
      self.send_error(503, "told to fail")
      return
    data = srv.files.get(self.path)
    if data is None:
      self.send_error(404)
      return
    start, status = 0, 200
    wanted = self.headers.get("Range")
    if wanted and "ignore_range" not in srv.modes:
      start = int(wanted.removeprefix("bytes=").split("-")[0])
      if start >= len(data):
        self.send_error(416)
        return
      status = 206
    body = data[start:]
    self.send_response(status)
    self.send_header("Content-Length", str(len(body)))
    if status == 206:
      self.send_header("Content-Range",
                       f"bytes {start}-{len(data) - 1}/{len(data)}")
    self.end_headers()
    if "truncate_once" in srv.modes:
      # Promise the whole body, send half, hang up: a dropped connection.
      srv.modes.discard("truncate_once")
      self.wfile.write(body[:len(body) // 2])
      self.wfile.flush()
      self.close_connection = True
      return
    self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
  daemon_threads = True

  def __init__(self):
    super().__init__(("127.0.0.1", 0), _Handler)
    self.files, self.seen, self.modes = {}, [], set()
    self.base = f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def server(tmp_path, monkeypatch):
  """A weights mirror on 127.0.0.1 and an empty cache, both for this test."""
  srv = _Server()
  thread = threading.Thread(target=srv.serve_forever, daemon=True)
  thread.start()
  monkeypatch.setenv(weights_hub.URL_ENV, srv.base)
  monkeypatch.setenv(weights_hub.CACHE_ENV, str(tmp_path / "cache"))
  yield srv
  srv.shutdown()
  srv.server_close()


def _npz_bytes(arrays) -> bytes:
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  return buf.getvalue()


def _tiny_resnet_pth(**arch) -> bytes:
  """A torchvision-layout ResNet state_dict, as torch.save writes it."""
  # Skips the calling test where PyTorch is absent (the Python 3.12 CI venv).
  torch = pytest.importorskip("torch")
  from jaxattn.torch_models import create_torch_model  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = create_torch_model("slresnet", attention="none", head="linear",
                             **arch)
  buf = io.BytesIO()
  torch.save(model.state_dict(), buf)
  return buf.getvalue()


def _serve_torchvision(srv, monkeypatch, data: bytes, *, sha=None,
                       expect=TINY_RESNET) -> weights_hub.Entry:
  """Registers torchvision:tiny (a stand-in the way resnet50 is listed:
  file named with its sha256 prefix, the keys and shapes it must hold)."""
  sha = sha or hashlib.sha256(data).hexdigest()[:8]
  entry = weights_hub.Entry(
      "torchvision", "tiny", f"resnet-tiny-{sha}.pth", "https://unused",
      sha256_prefix=sha,
      expect=lambda: weights_hub.torchvision_resnet_shapes(**expect))
  monkeypatch.setitem(weights_hub.TORCHVISION, "tiny", entry)
  srv.files[f"/torchvision/{entry.file}"] = data
  return entry


def _serve_augreg(srv, name="tiny-test", data=None) -> weights_hub.Entry:
  data = data if data is not None else _npz_bytes(
      {"a/kernel": np.arange(6.0).reshape(2, 3), "b": np.ones(4)})
  srv.files[f"/augreg/{name}.npz"] = data
  return weights_hub.lookup(f"augreg:{name}")


def _cache_listing(srv_tmp_cache) -> list[str]:
  return sorted(os.listdir(srv_tmp_cache)) if os.path.isdir(
      srv_tmp_cache) else []


def test_names_resolve_to_the_public_urls_and_paths_stay_paths(tmp_path,
                                                              monkeypatch):
  monkeypatch.delenv(weights_hub.URL_ENV, raising=False)
  assert weights_hub.lookup("torchvision:resnet152").url == (
      "https://download.pytorch.org/models/resnet152-b121ed2d.pth")
  assert weights_hub.lookup(weights_hub.AUGREG_B8).url == (
      "https://storage.googleapis.com/vit_models/augreg/B_8-i21k-300ep-lr_"
      "0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_"
      "0.01-res_224.npz")
  # What the names must hold: the seed 000 backbone's 86,576,872 values and
  # torchvision's 267 ResNet-50 tensors (no num_batches_tracked).
  b8 = weights_hub.lookup(weights_hub.AUGREG_B8).expect()
  assert sum(int(np.prod(s)) for s in b8.values()) == 86_576_872
  # A file whose name looks like KIND:NAME stays a path when it exists.
  odd = tmp_path / "augreg:B_8.npz"
  odd.write_bytes(b"")
  assert not weights_hub.is_name(str(odd))
  assert weights_hub.is_name("augreg:B_8") and not weights_hub.is_name("")
  pytest.importorskip("torch")  # torchvision's shapes come from the twin.
  r50 = weights_hub.lookup("torchvision:resnet50").expect()
  assert len(r50) == 267 and r50["fc.weight"] == (1000, 2048)


def test_unknown_kind_or_name_lists_the_known_ones():
  config = configlib.load(f"{REPO}/configs/cifar10_hybrid.py:smoke")
  for bad, what in (("hub:resnet50", "unknown kind 'hub'"),
                    ("torchvision:resnet18", "unknown torchvision name")):
    config.init_from = bad
    with pytest.raises(weights_hub.WeightsError, match=what) as e:
      pretrained.check(config)
    assert "torchvision:resnet50|resnet101|resnet152" in str(e.value)
    assert "augreg" in str(e.value)


def test_a_torchvision_name_without_torch_says_what_to_install(
    server, monkeypatch):
  import importlib.util  # pylint: disable=g-import-not-at-top
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
      None if name == "torch" else real(name, *a)))
  config = configlib.load(f"{REPO}/configs/cifar10_slresnet50.py")
  with pytest.raises(weights_hub.WeightsError,
                     match=r"needs PyTorch: pip install 'jaxattn\[torch\]'"):
    pretrained.check(config)
  assert not server.seen  # Nothing downloaded that could not be read.


def test_seed_configs_name_their_weights_and_smoke_runs_download_nothing():
  load = lambda spec: configlib.load(f"{REPO}/configs/{spec}")
  assert load("food101_hybrid.py").init_from == weights_hub.AUGREG_B8
  assert load("cifar10_hybrid.py").pretrained_required
  assert load("cifar100_slresnet50.py").init_from == "torchvision:resnet50"
  assert load("cifar10_slresnet50.py:depth=101").init_from == (
      "torchvision:resnet101")
  assert load("aircraft_slresnet50.py:depth=152").init_from == (
      "torchvision:resnet152")
  for smoke in ("cifar10_hybrid.py:smoke", "cifar10_slresnet50.py:smoke",
                "cifar100_gsop_resnet50.py:smoke"):
    assert load(smoke).init_from == ""


def test_first_download_lands_in_the_cache_with_a_progress_bar(server,
                                                              capsys):
  entry = _serve_augreg(server)
  path = weights_hub.fetch(entry)
  assert path == os.path.join(weights_hub.cache_dir(), "tiny-test.npz")
  assert open(path, "rb").read() == server.files["/augreg/tiny-test.npz"]
  assert "100%" in capsys.readouterr().err  # tqdm, through pooch.
  assert _cache_listing(weights_hub.cache_dir()) == [
      "tiny-test.npz", "tiny-test.npz.lock"]


def test_a_cached_file_is_not_requested_again(server):
  entry = _serve_augreg(server)
  first = weights_hub.fetch(entry, progressbar=False)
  assert weights_hub.fetch(entry, progressbar=False) == first
  assert len(server.seen) == 1


def _left_part(server, num_bytes: int | None):
  """A served AugReg file whose first bytes (all if None) an earlier run
  left in the cache as FILE.part: (entry, the file's bytes, final path)."""
  entry = _serve_augreg(server)
  data = server.files["/augreg/tiny-test.npz"]
  os.makedirs(weights_hub.cache_dir())
  final = os.path.join(weights_hub.cache_dir(), entry.file)
  with open(final + weights_hub.PART_SUFFIX, "wb") as f:
    f.write(data[:num_bytes])
  return entry, data, final


def test_a_partial_download_resumes_with_a_range_request(server):
  entry, data, final = _left_part(server, 100)
  assert weights_hub.fetch(entry, progressbar=False) == final
  assert server.seen == [(f"/augreg/{entry.file}", "bytes=100-")]
  assert open(final, "rb").read() == data
  assert not os.path.exists(final + weights_hub.PART_SUFFIX)


def test_a_part_that_is_already_whole_is_fetched_again(server):
  # A run stopped between the last byte and the rename: the server answers
  # the Range request with 416; the file is fetched whole, not guessed at.
  entry, data, final = _left_part(server, None)
  weights_hub.fetch(entry, progressbar=False)
  assert [r for _, r in server.seen] == [f"bytes={len(data)}-", None]
  assert open(final, "rb").read() == data


def test_a_server_that_ignores_range_still_gives_a_whole_file(server):
  entry = _serve_augreg(server)
  data = server.files["/augreg/tiny-test.npz"]
  server.modes.add("ignore_range")
  os.makedirs(weights_hub.cache_dir())
  final = os.path.join(weights_hub.cache_dir(), entry.file)
  with open(final + weights_hub.PART_SUFFIX, "wb") as f:
    f.write(data[:100])
  weights_hub.fetch(entry, progressbar=False)
  assert server.seen == [(f"/augreg/{entry.file}", "bytes=100-")]
  assert open(final, "rb").read() == data


def test_a_dropped_connection_keeps_the_part_and_the_next_run_resumes(
    server):
  # Several download chunks, so that half the file is some whole chunks.
  entry = _serve_augreg(server, data=_npz_bytes(
      {"a": np.arange(8 * weights_hub.CHUNK_BYTES // 8, dtype=np.float64)}))
  data = server.files["/augreg/tiny-test.npz"]
  final = os.path.join(weights_hub.cache_dir(), entry.file)
  server.modes.add("truncate_once")
  with pytest.raises(weights_hub.WeightsError,
                     match="kept in .*tiny-test.npz.part.*resumes"):
    weights_hub.fetch(entry, progressbar=False)
  assert not os.path.exists(final)
  half = os.path.getsize(final + weights_hub.PART_SUFFIX)
  assert 0 < half < len(data)
  weights_hub.fetch(entry, progressbar=False)
  assert server.seen[-1] == (f"/augreg/{entry.file}", f"bytes={half}-")
  assert open(final, "rb").read() == data


def _assert_nothing_complete(entry):
  left = _cache_listing(weights_hub.cache_dir())
  assert entry.file not in left and entry.file + ".part" not in left, left
  assert not [f for f in left if f.startswith("tmp")], left  # pooch's temp.


def test_a_wrong_hash_is_rejected_and_deleted(server, monkeypatch):
  entry = _serve_torchvision(server, monkeypatch, _tiny_resnet_pth(
      **TINY_RESNET), sha="0badc0de")
  with pytest.raises(weights_hub.WeightsError) as e:
    weights_hub.fetch(entry, progressbar=False)
  message = str(e.value)
  assert "its sha256 is" in message and "starting 0badc0de" in message
  assert entry.url in message
  assert os.path.join(weights_hub.cache_dir(), entry.file) in message
  _assert_nothing_complete(entry)


def test_wrong_keys_or_shapes_are_rejected_and_deleted(server, monkeypatch):
  # A ResNet twice as wide as the name says (what a mirror with the wrong
  # file would serve); the sha256 prefix fits the served bytes.
  entry = _serve_torchvision(server, monkeypatch, _tiny_resnet_pth(
      depth=50, stage_sizes=(1, 1, 1, 1), width=16))
  with pytest.raises(weights_hub.WeightsError) as e:
    weights_hub.fetch(entry, progressbar=False)
  message = str(e.value)
  assert "not the file it names" in message
  assert "Shape mismatches" in message and "conv1.weight: download" in message
  _assert_nothing_complete(entry)
  # Keys: an AugReg name says which ViT it is; a stand-in .npz is not it.
  entry = _serve_augreg(server, "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03"
                        "-do_0.0-sd_0.0")
  with pytest.raises(weights_hub.WeightsError,
                     match=r"(?s)Missing from the download \(200\).*"
                     r"encoder_norm/bias.*Unexpected in the download \(2\)"):
    weights_hub.fetch(entry, progressbar=False)
  _assert_nothing_complete(entry)


def test_a_file_of_the_wrong_size_is_rejected(server):
  data = _npz_bytes({"a": np.arange(1000.0)})
  entry = _serve_augreg(server, data=data[:len(data) - 200])  # Cut short.
  with pytest.raises(weights_hub.WeightsError, match="not a readable .npz"):
    weights_hub.fetch(entry, progressbar=False)
  _assert_nothing_complete(entry)


def test_a_wrong_file_put_in_the_cache_by_hand_is_moved_aside(server,
                                                              monkeypatch):
  entry = _serve_torchvision(server, monkeypatch, _tiny_resnet_pth(
      **TINY_RESNET))
  os.makedirs(weights_hub.cache_dir())
  final = os.path.join(weights_hub.cache_dir(), entry.file)
  with open(final, "wb") as f:  # The manual step, with the wrong file.
    f.write(_tiny_resnet_pth(depth=50, stage_sizes=(1, 1, 1, 1), width=16))
  with pytest.raises(weights_hub.WeightsError,
                     match=r"(?s)is not torchvision:tiny.*its sha256 is.*"
                     r"moved to .*\.rejected"):
    weights_hub.fetch(entry, progressbar=False)
  assert not os.path.exists(final) and not server.seen
  assert os.path.exists(final + weights_hub.REJECTED_SUFFIX)
  # The next run downloads the right file.
  assert weights_hub.fetch(entry, progressbar=False) == final
  assert len(server.seen) == 1


@pytest.mark.parametrize("how", ["offline", "http_error"])
def test_offline_or_failing_server_gives_one_error_with_the_manual_step(
    server, how):
  entry = _serve_augreg(server)
  if how == "offline":
    server.shutdown()
    server.server_close()
  else:
    server.modes.add("fail")
  config = configlib.load(f"{REPO}/configs/cifar10_hybrid.py:smoke")
  config.init_from = entry.spec
  with pytest.raises(weights_hub.WeightsError) as e:
    pretrained.check(config)
  message = str(e.value)
  path = os.path.join(weights_hub.cache_dir(), entry.file)
  assert (f"Could not get pretrained weights augreg:tiny-test from "
          f"{entry.url} into the cache at {path}") in message
  assert ("cannot connect" if how == "offline" else "HTTP 503") in message
  assert f"Download {entry.url} yourself and put it at {path}" in message
  assert "--config.init_from=/your/file" in message
  assert e.value.__cause__ is None and e.value.__suppress_context__
  _assert_nothing_complete(entry)


def test_a_torchvision_name_converts_once_and_trains(server, monkeypatch,
                                                     tmp_path):
  """End to end: seed 001's smoke SL-ResNet from torchvision:tiny, served
  locally, through the from-torch conversion; lr 0 so the trained kernels
  are the file's."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  import jaxattn  # pylint: disable=g-import-not-at-top
  from jaxattn.convert import commands  # pylint: disable=g-import-not-at-top

  entry = _serve_torchvision(server, monkeypatch,
                             _tiny_resnet_pth(**TINY_RESNET))
  config = configlib.load(f"{REPO}/configs/cifar10_slresnet50.py:smoke")
  config.init_from = entry.spec
  config.num_steps, config.val_split, config.test_split = 1, "", ""
  config.schedule.lr = 0.0
  conversions = []
  real_from_torch = commands.from_torch
  monkeypatch.setattr(commands, "from_torch", lambda *a, **k: (
      conversions.append(a[0]), real_from_torch(*a, **k))[1])
  train.train_and_evaluate(config, str(tmp_path / "w"))
  # check() and load() both resolved the name: one download, one conversion.
  assert len(server.seen) == 1 and len(conversions) == 1
  converted_root = os.path.join(weights_hub.cache_dir(), "converted")
  (converted,) = [os.path.join(converted_root, d)
                  for d in os.listdir(converted_root)]
  with np.load(os.path.join(converted, pretrained.VARIABLES_FILE)) as npz:
    stored = dict(npz)
  _, variables, _ = jaxattn.load(str(tmp_path / "w"))
  trained = traverse_util.flatten_dict(variables["params"], sep="/")
  np.testing.assert_array_equal(trained["conv1/kernel"],
                                stored["params/conv1/kernel"])
  np.testing.assert_array_equal(trained["layer4_0/conv3/kernel"],
                                stored["params/layer4_0/conv3/kernel"])


def test_an_augreg_name_loads_into_the_hybrid_backbone(server):
  """The hybrid smoke backbone from augreg:tiny-vit (a small stand-in .npz
  in the vit_jax layout), as Experiment.init_state loads it; the fusion head
  keeps its initialisation."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from jaxattn.convert import commands  # pylint: disable=g-import-not-at-top
  from jaxattn.models import hybrid  # pylint: disable=g-import-not-at-top

  config = configlib.load(f"{REPO}/configs/cifar10_hybrid.py:smoke")
  backbone = hybrid.ViTBackbone(**{k: config.model[k] for k in (
      "patch_size", "hidden_dim", "depth", "num_heads", "mlp_dim")})
  params = backbone.init(jax.random.key(7), np.zeros((1, 32, 32, 3)))["params"]
  flat = {k: np.asarray(v) + 0.5  # Distinct from any init.
          for k, v in traverse_util.flatten_dict(params, sep="/").items()}
  entry = _serve_augreg(server, "tiny-vit", _npz_bytes(flat))
  config.init_from, config.pretrained_required = entry.spec, True
  config, _, shapes = commands.model_shapes(config)
  init = traverse_util.unflatten_dict(
      {k: np.full(s, 7.0, np.float32) for k, s in shapes.items()})
  loaded, _ = pretrained.load(config, init["params"], init.get("batch_stats"))
  got = traverse_util.flatten_dict(loaded["backbone"], sep="/")
  assert got.keys() == flat.keys()
  for key, value in flat.items():
    np.testing.assert_array_equal(got[key], value)
  assert all((v == 7.0).all() for v in jax.tree.leaves(loaded["fusion"]))
  assert len(server.seen) == 1  # check() and load(): one download.
