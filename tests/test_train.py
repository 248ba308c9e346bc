"""In-process checks of train_and_evaluate: bad input fails early and clearly."""

import os

import pytest

from jaxattn import checkpointing, configlib, train
from jaxattn.data import sources
from tests.conftest import REPO, PreemptedAt


def _smoke_config():
  return configlib.load(f"{REPO}/configs/quickstart.py:smoke")


@pytest.mark.parametrize("key,value,error,match", [
    ("model.name", "vitt", ValueError, r"Unknown model 'vitt'.*conv_vit.*vit"),
    ("dataset", "tfds:not_a_dataset", sources.DatasetError, "not found"),
    ("train_split", "training", sources.DatasetError,
     r"config.train_split='training'.*one of \['train', 'test'\]"),
    ("val_split", "train[95%:200%]", sources.DatasetError, "Cannot use split"),
    ("image_size", (18, 18), ValueError, "18x18 is not divisible by patch_size=4"),
    ("batch_size", 6, ValueError, "multiple of the number of devices"),
    ("batch_size", 4096, ValueError, "exceeds the"),
    ("num_classes", 3, ValueError, "has 10 classes"),
    ("pixel_mean", (0.5, 0.5), ValueError, "1 channel"),
    ("parallel", "pjit", ValueError, "'jit' or 'pmap'"),
    ("test_checkpoint", "final", ValueError,
     r"test_checkpoint='final' must be one of \('best', 'last'\).*=last"),
])
def test_bad_input_is_reported(tmp_path, key, value, error, match):
  config = _smoke_config()
  section, _, field = key.rpartition(".")
  (config[section] if section else config)[field] = value
  with pytest.raises(error, match=match):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / checkpointing.LATEST_DIR) or not [
      d for d in os.listdir(tmp_path / checkpointing.LATEST_DIR)]


def test_unknown_model_option(tmp_path):
  config = _smoke_config()
  with config.unlocked():  # As a config file with a stray model option.
    config.model.hidden = 3
  with pytest.raises(ValueError, match=r"no option\(s\) \['hidden'\].*hidden_dim"):
    train.train_and_evaluate(config, str(tmp_path))


def test_a_workdir_refuses_another_model_and_keeps_its_checkpoint(tmp_path):
  config = _smoke_config()
  config.num_epochs = 0
  config.num_steps = 2
  train.train_and_evaluate(config, str(tmp_path))
  steps_before = os.listdir(tmp_path / checkpointing.LATEST_DIR)
  other = _smoke_config()
  other.model.hidden_dim = 32
  with pytest.raises(ValueError, match="use a new --workdir"):
    train.train_and_evaluate(other, str(tmp_path))
  assert os.listdir(tmp_path / checkpointing.LATEST_DIR) == steps_before


def test_early_stopping_stops_when_validation_stalls(tmp_path):
  config = _smoke_config()
  config.num_epochs = 10
  config.batch_size = 64
  config.schedule.name, config.schedule.lr = "constant", 0.0  # Never improves.
  config.schedule.warmup_epochs = 0.0
  config.early_stopping_patience = 2
  results = train.train_and_evaluate(config, str(tmp_path))
  steps_per_epoch = 1293 // 64  # train[:90%] of the 1,437 digits.
  assert results["stopped_early"]
  assert results["final_step"] == 3 * steps_per_epoch
  assert results["best_step"] == steps_per_epoch
  # The run is finished: rerunning returns at once with the same results.
  assert train.train_and_evaluate(config, str(tmp_path)) == results


def _load_config(name, arg):
  return configlib.load(f"{REPO}/configs/{name}.py:{arg}")


def test_hybrid_starts_from_npz_and_keeps_the_backbone_frozen(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  import jaxattn  # pylint: disable=g-import-not-at-top
  from jaxattn.models import hybrid  # pylint: disable=g-import-not-at-top

  config = _load_config("cifar10_hybrid", "smoke")
  backbone = hybrid.ViTBackbone(**{k: config.model[k] for k in (
      "patch_size", "hidden_dim", "depth", "num_heads", "mlp_dim")})
  params = backbone.init(jax.random.key(7), np.zeros((1, 32, 32, 3)))["params"]
  flat = {"/".join(k): np.asarray(v) + 0.5  # Distinct from any init.
          for k, v in traverse_util.flatten_dict(params).items()}
  npz = tmp_path / "vit.npz"
  np.savez(npz, **flat)
  config.init_from = str(npz)
  train.train_and_evaluate(config, str(tmp_path / "w"))
  _, variables, _ = jaxattn.load(str(tmp_path / "w"))
  trained = traverse_util.flatten_dict(variables["params"]["backbone"])
  for key, value in flat.items():
    np.testing.assert_array_equal(trained[tuple(key.split("/"))], value)


def test_init_from_errors(tmp_path):
  config = _load_config("cifar10_hybrid", "smoke")
  config.pretrained_required = True
  with pytest.raises(ValueError, match="--config.init_from=PATH.npz"):
    train.train_and_evaluate(config, str(tmp_path))
  config.init_from = str(tmp_path / "missing.npz")
  with pytest.raises(FileNotFoundError, match="is not a file"):
    train.train_and_evaluate(config, str(tmp_path))
  (tmp_path / "weights.pth").write_bytes(b"")
  config.init_from = str(tmp_path / "weights.pth")
  with pytest.raises(ValueError, match="jaxattn.convert from-torch"):
    train.train_and_evaluate(config, str(tmp_path))


def test_feature_cache_trains_the_head_like_the_uncached_path(tmp_path,
                                                               monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import jaxattn  # pylint: disable=g-import-not-at-top
  from jaxattn import feature_cache  # pylint: disable=g-import-not-at-top

  results, fusion = {}, {}
  for cached in (False, True):
    config = _load_config("cifar10_hybrid", "smoke")
    config.cache_backbone_features = cached
    workdir = tmp_path / f"cached_{cached}"
    if cached:  # Preempted at step 3 of 6: the resume reads the cache back.
      with monkeypatch.context() as patch:
        patch.setattr(train.distributed, "PreemptionWatch", PreemptedAt(3))
        train.train_and_evaluate(config, str(workdir))
      assert os.listdir(workdir / feature_cache.CACHE_DIR)
    results[cached] = train.train_and_evaluate(config, str(workdir))
    fusion[cached] = jaxattn.load(str(workdir))[1]["params"]["fusion"]
  assert os.listdir(tmp_path / "cached_True" / feature_cache.CACHE_DIR)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               fusion[True], fusion[False])
  np.testing.assert_allclose(results[True]["test"]["loss"],
                             results[False]["test"]["loss"], rtol=1e-4)
  assert results[True]["test"]["num_examples"] == 40


def test_feature_cache_refuses_augmented_inputs(tmp_path):
  config = _load_config("cifar100_hybrid", "smoke")
  config.cache_backbone_features = True
  with pytest.raises(ValueError, match="augments them"):
    train.train_and_evaluate(config, str(tmp_path))


def test_a_non_finite_loss_stops_the_run_and_keeps_its_checkpoints(tmp_path):
  from jaxattn import periodic  # pylint: disable=g-import-not-at-top

  config = _smoke_config()
  config.num_epochs, config.batch_size = 2, 64  # 20 steps an epoch.
  config.log_every_steps = 50  # The guard also runs where nothing is logged.
  # Epoch 1 trains normally (and is saved as latest and best); update 21
  # (epoch 1.05) has a learning rate of 1e30 (finite: the config check
  # refuses inf), which overflows the activations, so step 22's loss is NaN.
  config.schedule.name = "piecewise_linear"
  config.schedule.knots = ((0.0, 1e-3), (1.02, 1e-3), (1.03, 1e30))
  with pytest.raises(periodic.NonFiniteLossError,
                     match=r"NaN or inf at step 22 \(checked steps 21-40\).*"
                     r"last checkpoint is step 20 \(best: 20\)"):
    train.train_and_evaluate(config, str(tmp_path))
  for directory in (checkpointing.LATEST_DIR, checkpointing.BEST_DIR):
    assert os.listdir(tmp_path / directory) == ["20"]
  assert not (tmp_path / train.RESULTS_FILE).exists()
  # Rerun: it resumes at step 20, so it checked steps 21-40 (not 1-40), and
  # it advises only what the config does not already do (quickstart clips
  # gradients and trains in float32).
  with pytest.raises(periodic.NonFiniteLossError,
                     match=r"checked steps 21-40\).*Lower the learning "
                     r"rate \(config.schedule.lr\)\.$") as error:
    train.train_and_evaluate(config, str(tmp_path))
  assert "clip" not in str(error.value) and "float32" not in str(error.value)


def _good_then_ruined_config():
  """Epoch 1 learns; epochs 2-3 take steps of ~lr=2 per parameter (clipped
  gradients, Adam), which wreck the model: the best epoch is the first."""
  config = _smoke_config()
  config.num_epochs, config.batch_size = 3, 64  # 20 steps an epoch.
  config.schedule.name = "piecewise_linear"
  config.schedule.knots = ((0.0, 3e-3), (1.0, 3e-3), (1.05, 2.0), (3.0, 2.0))
  return config


def test_the_test_split_uses_the_best_checkpoint_unless_told_last(tmp_path):
  from jaxattn import periodic  # pylint: disable=g-import-not-at-top

  best = train.train_and_evaluate(_good_then_ruined_config(),
                                  str(tmp_path / "best"))
  assert best["best_step"] == 20 and best["final_step"] == 60
  assert best["test_checkpoint"] == {"step": 20, "which": "best"}
  config = _good_then_ruined_config()
  config.test_checkpoint = "last"
  last = train.train_and_evaluate(config, str(tmp_path / "last"))
  assert last["test_checkpoint"] == {"step": 60, "which": "last"}
  # The same training; only the checkpoint tested differs.
  assert last["best_val"] == best["best_val"]
  assert best["test"]["accuracy"] > last["test"]["accuracy"] + 0.2

  # metrics.csv: a row per epoch, as the seeds log them.
  rows = periodic.read_metrics_csv(str(tmp_path / "best"))
  assert [(r["epoch"], r["step"]) for r in rows] == [(1, 20), (2, 40), (3, 60)]
  assert list(rows[0]) == list(periodic.METRICS_COLUMNS)
  assert rows[0]["val_accuracy"] == pytest.approx(best["best_val"])
  assert rows[-1]["val_accuracy"] == pytest.approx(best["val"]["accuracy"])
  assert rows[0]["learning_rate"] == pytest.approx(3e-3)  # Step 20's update.
  assert rows[2]["learning_rate"] == pytest.approx(2.0)
  assert all(r["epoch_seconds"] > 0 and 0 <= r["train_accuracy"] <= 1 and
             r["train_loss"] > 0 for r in rows)
  assert rows[0]["train_accuracy"] > rows[2]["train_accuracy"]


def test_a_resumed_run_drops_the_metrics_rows_after_its_checkpoint(tmp_path):
  import types  # pylint: disable=g-import-not-at-top
  from jaxattn import periodic  # pylint: disable=g-import-not-at-top

  (tmp_path / periodic.METRICS_FILE).write_text(
      ",".join(periodic.METRICS_COLUMNS) + "\n" +
      "".join(f"{e},{20 * e},1.0,0.5,,,0.001,3.5\n" for e in (1, 2, 3)))
  exp = types.SimpleNamespace(config=types.SimpleNamespace(batch_size=64),
                              workdir=str(tmp_path))
  periodic.EpochLog(exp, writer=None, start_step=40)  # Killed after step 40.
  rows = periodic.read_metrics_csv(str(tmp_path))
  assert [r["step"] for r in rows] == [20, 40]
  assert rows[1]["val_loss"] is None and rows[1]["train_loss"] == 1.0
