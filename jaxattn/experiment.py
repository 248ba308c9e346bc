"""An Experiment: a config made concrete, assembled once for every entry point.

``Experiment(config)`` resolves the config against its dataset (classes,
channels, splits), builds the model and its interface, the schedule and the
optimizer, the device mesh, and the train state's shapes with their
shardings. It offers what training, evaluation, bench, summary, inference and
the converter need::

  exp.init_state()            a fresh state, created in its sharded layout
                              (plus config.init_from's pretrained weights)
  exp.restore("best")         (state, meta, step) from the run's workdir
  exp.train_fn / exp.eval_fn  the jitted train and eval steps
  exp.evaluate(state, split)  metrics over every example of a split once
  exp.train_dataset(step)     the training input from `step` on

How much of the dataset it reads is ``data``: ``"full"`` (training and
evaluation: every configured split is checked), ``"train"`` (only the train
split: the input-pipeline benchmark), ``"metadata"`` (classes and shapes only,
nothing downloaded: summary, bench, the converter) or ``"none"`` (a workdir's
saved config is already resolved: ``Experiment.for_workdir``).

Only reading data needs TensorFlow (the ``data`` extra): ``"metadata"`` and
``"none"`` experiments, their models, states, steps and synthetic batches,
run without it. The tf.data modules are reached as ``data_lib.sources`` and
``data_lib.pipeline``, imported on first use (``jaxattn/data/__init__.py``).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxattn import (checkpointing, configlib, cpu_layout, dispatch, mixing,
                     optim, parallel, pretrained, steps)
from jaxattn import data as data_lib
from jaxattn.models import create_model, get_interface, kernels
from jaxattn.models import interface as interface_lib

PyTree = Any
DATA_MODES = ("full", "train", "metadata", "none")
# Without the training split's size (metadata only) an epoch is nominal: the
# schedule's shape matters, not its length.
NOMINAL_STEPS_PER_EPOCH = 1000


class Experiment:
  """The resolved config, data source, model, optimizer, mesh and steps."""

  def __init__(self, config: ml_collections.ConfigDict, *, data: str = "full",
               workdir: str | None = None, mesh_devices: int | None = None,
               probe_layout: bool = False):
    """``mesh_devices``: how many devices the mesh spans (None: every device,
    or on a CPU host the count ``cpu_layout`` chose; ``probe_layout``: let it
    measure the candidates when this model has no measured layout yet)."""
    if data not in DATA_MODES:
      raise ValueError(f"data={data!r} must be one of {DATA_MODES}.")
    self.workdir = os.path.abspath(workdir) if workdir else None
    # --- Data source and the config it resolves ----------------------------
    if data == "none":
      self.source = None
      self.config = ml_collections.ConfigDict(config.to_dict())
    else:
      self.source = (metadata_source(config) if data == "metadata"
                     else get_source(config))
      self.config = resolve_config(config, self.source, splits={
          "full": ("train_split", "val_split"), "train": ("train_split",),
          "metadata": ()}[data])
    config = self.config
    # "auto" becomes the platform's dtype here, before anything reads it
    # (the CPU layout's cache key, the model, config.json).
    config.compute_dtype = resolve_compute_dtype(
        config.compute_dtype, jax.devices()[0].platform)
    check_matmul_precision(config.get("matmul_precision", "default"))
    self.interface = get_interface(config.model.name)
    self.interface.check(config)

    # --- Mesh and each process's share of a batch -------------------------
    if mesh_devices is None:  # A CPU host: the device count measured fastest.
      layout = cpu_layout.choose(config, probe=probe_layout)
      cpu_layout.log(layout)
      mesh_devices = layout.num_devices if layout else None
    self.mesh = parallel.create_mesh(mesh_devices)
    # Which ops the steps compile (models/kernels.py): the XLA:CPU rewrites
    # where they are compiled for the CPU, the models' own ops elsewhere.
    self.kernels = kernels.resolve(config.get("kernels", "auto"),
                                   kernels.platform_of(self.mesh))
    self.batch_sharding = parallel.batch_sharded(self.mesh)
    if data == "full":  # Fail now on a batch the devices cannot split.
      self.shard, self.eval_shard  # pylint: disable=pointless-statement

    # --- Duration ----------------------------------------------------------
    num_train = None
    if data in ("full", "train"):
      num_train = self.source.num_examples(config.train_split)
    elif data == "metadata":
      try:
        num_train = self.source.num_examples(config.train_split)
      except Exception:  # pylint: disable=broad-except
        num_train = None  # Metadata only: the epoch length is nominal.
    self.num_train_examples = num_train
    if num_train is None:
      self.steps_per_epoch = NOMINAL_STEPS_PER_EPOCH
    else:
      self.steps_per_epoch = num_train // config.batch_size
      if not self.steps_per_epoch and data != "metadata":
        raise configlib.ConfigError(
            f"config.batch_size={config.batch_size} exceeds the {num_train} "
            f"examples of {config.train_split!r}; lower --config.batch_size.")
      self.steps_per_epoch = max(1, self.steps_per_epoch)
    self.total_steps = (config.num_steps or
                        config.num_epochs * self.steps_per_epoch)
    self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)

    # --- Model, loss and optimizer -----------------------------------------
    self.model = build_model(config)
    self.loss_spec = self.interface.loss_spec(config)
    self.mix = mixing.MixSpec.from_config(config)
    # What the steps are fed: the model's own inputs, until with_features.
    self.input_kind = self.interface.input_kind(config)
    self.input_shape = tuple(self.interface.init_shape(config))
    self.apply_method = None  # __call__.
    self.learning_rate_fn = optim.create_learning_rate_fn(
        config, self.steps_per_epoch, self.total_steps)
    self.tx = optim.create_optimizer(config, self.learning_rate_fn)

    # --- State shapes, each leaf carrying its sharding ---------------------
    self.abstract_state = self._abstract_state()
    self.state_sharding = jax.tree.map(lambda x: x.sharding,
                                       self.abstract_state)

  @functools.cached_property
  def shard(self) -> data_lib.ProcessShard:
    """This process's rows of each training batch."""
    return data_lib.ProcessShard(
        jax.process_index(), jax.process_count(),
        parallel.check_batch_size(self.config.batch_size, mesh=self.mesh))

  @functools.cached_property
  def eval_shard(self) -> data_lib.ProcessShard:
    return data_lib.ProcessShard(
        jax.process_index(), jax.process_count(),
        parallel.check_batch_size(self.config.eval_batch_size,
                                  "eval_batch_size", mesh=self.mesh))

  @classmethod
  def for_workdir(cls, workdir: str) -> "Experiment":
    """The experiment of a training run, from its saved (resolved) config;
    reads no data, so a run restores where its dataset is absent."""
    return cls(checkpointing.load_config(workdir), data="none",
               workdir=workdir)

  def with_features(self, source: data_lib.sources.DataSource | None
                    ) -> "Experiment":
    """The same experiment fed the frozen part's outputs (``source``: the
    feature cache) instead of images: its steps call the model interface's
    ``cached_features_method``. Same state, parameters and shardings."""
    method = self.interface.cached_features_method
    if method is None:
      raise ValueError(f"Model {self.config.model.name!r} has no frozen part "
                       "whose outputs could be cached.")
    other = object.__new__(Experiment)
    other.__dict__.update(self.__dict__)
    for cached in ("train_fn", "eval_fn"):  # Compiled for the other inputs.
      other.__dict__.pop(cached, None)
    other.source, other.apply_method = source, method
    other.input_kind = interface_lib.INPUT_FEATURES
    other.input_shape = tuple(self.interface.feature_shape(self.config))
    return other

  # --------------------------------------------------------------------------
  # State.
  # --------------------------------------------------------------------------
  def _create_state(self, rng: jax.Array) -> steps.TrainState:
    return steps.create_train_state(
        rng, model=self.model, tx=self.tx,
        input_shape=self.interface.init_shape(self.config),
        ema=bool(self.config.get("ema_decay", 0.0)))

  @property
  def use_ema(self) -> bool:
    """Evaluation, the best checkpoint and inference use the EMA weights."""
    return bool(self.config.get("ema_decay", 0.0) and
                self.config.get("eval_ema", True))

  def eval_variables(self, state: steps.TrainState) -> PyTree:
    """The variables evaluation and inference use (EMA weights or not)."""
    return state.variables(self.use_ema)

  def _abstract_state(self) -> PyTree:
    """Shardings follow config.sharding_rules (replicated, or FSDP over the
    data axis). Checkpoints are restored onto these, so a run saved on one
    mesh resumes on a mesh of another size."""
    config = self.config
    shapes = jax.eval_shape(self._create_state,
                            jax.random.key_data(jax.random.key(0)))
    shardings = parallel.state_shardings(
        shapes, self.mesh,
        rules=config.get("sharding_rules", parallel.DEFAULT_RULES),
        fsdp_min_size_mb=config.get("fsdp_min_size_mb", 4.0))
    if config.parallel == "pmap" and not parallel.is_replicated(shardings):
      raise configlib.ConfigError(
          "config.parallel='pmap' runs one program per device on a full copy "
          "of the state, so config.sharding_rules cannot shard it (FSDP); use "
          "--config.parallel=jit with FSDP rules.")
    return jax.tree.map(
        lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                 sharding=sharding),
        shapes, shardings)

  def init_state(self) -> steps.TrainState:
    """A fresh state, created directly in its sharded layout; with
    ``config.init_from``, its pretrained part loaded."""
    pretrained.check(self.config)
    init = jax.jit(self._create_state, out_shardings=self.state_sharding)
    state = init(jax.random.key_data(jax.random.key(self.config.seed)))
    if self.config.init_from:
      params, stats = pretrained.load(
          self.config, jax.device_get(state.params),
          jax.device_get(state.batch_stats), interface=self.interface)
      state = state.replace(
          params=jax.device_put(params, self.state_sharding.params),
          batch_stats=jax.device_put(stats, self.state_sharding.batch_stats))
      logging.info("Initialised from %s.", self.config.init_from)
    return state

  def restore(self, which: str | int = "latest", *,
              checkpoints: checkpointing.RunCheckpoints | None = None,
              best_or_latest: bool = False
              ) -> tuple[steps.TrainState, dict[str, Any], int]:
    """(state, meta, step) of checkpoint 'latest' | 'best' | STEP, onto this
    experiment's shardings; from ``checkpoints`` or the workdir's.
    ``best_or_latest``: 'best' means the latest when no best one was kept."""
    if checkpoints is not None:
      return checkpoints.restore(self.abstract_state, which,
                                 best_or_latest=best_or_latest)
    if self.workdir is None:
      raise ValueError("Experiment.restore needs a workdir: build it with "
                       "Experiment(config, workdir=DIR) or for_workdir(DIR).")
    ckpt = checkpointing.RunCheckpoints(self.workdir, read_only=True)
    try:
      return ckpt.restore(self.abstract_state, which,
                          best_or_latest=best_or_latest)
    finally:
      ckpt.close()

  def num_params(self) -> int:
    return sum(x.size for x in jax.tree.leaves(self.abstract_state.params))

  # --------------------------------------------------------------------------
  # Compiled steps.
  # --------------------------------------------------------------------------
  def traced(self, fn, step_kernels: kernels.Kernels | None = None):
    """``fn`` traced with this experiment's kernels and matmul precision
    (wrap it before ``jax.jit``: both hold on every retrace).

    The precision is set only where the step is compiled for an accelerator
    (``step_kernels.platform``): XLA:CPU computes float32 in float32 at every
    setting, so a CPU step stays the very program it was without the key
    (benchmarks/README.md, "Plain models").
    """
    step_kernels = step_kernels or self.kernels
    with_kernels = kernels.traced_with(step_kernels, fn)
    precision = self.config.get("matmul_precision", "default")
    if step_kernels.platform == "cpu" or precision == "default":
      return with_kernels

    @functools.wraps(fn)
    def traced_fn(*args, **kwargs):
      with jax.default_matmul_precision(precision):
        return with_kernels(*args, **kwargs)

    return traced_fn

  def make_train_fn(self, *, donate: bool = True,
                    step_kernels: kernels.Kernels | None = None):
    """The jitted train step; ``step_kernels`` replaces the kernels chosen
    for this experiment's devices (bench counts the plain step's FLOPs; a
    step exported for another platform)."""
    return jax.jit(
        self.traced(functools.partial(
            steps.train_step, model=self.model, tx=self.tx,
            learning_rate_fn=self.learning_rate_fn,
            num_classes=self.config.num_classes, loss_spec=self.loss_spec,
            method=self.apply_method, mix=self.mix,
            ema_decay=self.config.get("ema_decay", 0.0),
            grad_accum_steps=self.config.get("grad_accum_steps", 1),
            parallel=self.config.parallel, mesh=self.mesh,
            **self._pixel_stats), step_kernels),
        in_shardings=(self.state_sharding, self.batch_sharding),
        out_shardings=(self.state_sharding, parallel.replicated(self.mesh)),
        donate_argnums=0 if donate else ())

  @property
  def _pixel_stats(self) -> dict[str, tuple[float, ...]]:
    """What the steps standardise the pipeline's uint8 images with."""
    return dict(pixel_mean=tuple(self.config.pixel_mean),
                pixel_std=tuple(self.config.pixel_std))

  @functools.cached_property
  def train_fn(self):
    return self.make_train_fn()

  @functools.cached_property
  def eval_fn(self):
    return jax.jit(
        self.traced(functools.partial(
            steps.eval_step, model=self.model, loss_spec=self.loss_spec,
            method=self.apply_method, use_ema=self.use_ema,
            **self._pixel_stats)),
        in_shardings=(self.state_sharding, self.batch_sharding),
        out_shardings=parallel.replicated(self.mesh))

  def synthetic_batch(self, size: int, *, with_mask: bool = False,
                      seed: int = 0) -> dict[str, jax.Array]:
    """A random batch of the train step's input shape, on the mesh (bench
    and the CPU layout probe). Normalised images are roughly N(0, 1), and so,
    scaled, are the backbone logits of seed 000's feature-cached head."""
    rng = np.random.default_rng(seed)
    batch = {"image": rng.standard_normal((size, *self.input_shape)
                                          ).astype(np.float32),
             "label": rng.integers(0, self.config.num_classes, size)}
    if with_mask:
      batch["mask"] = np.ones(size, np.float32)
    return parallel.global_batch(batch, self.batch_sharding)

  def apply(self, variables: PyTree, inputs: jax.Array) -> Any:
    """The model's eval-mode outputs on a batch of the pipeline's inputs
    (uint8 images are standardised first, as the eval step does)."""
    inputs = data_lib.on_device.prepare_images(inputs, **self._pixel_stats)
    return self.model.apply(variables, inputs, train=False,
                            method=self.apply_method)

  # --------------------------------------------------------------------------
  # Data.
  # --------------------------------------------------------------------------
  def train_dataset(self, start_step: int = 0):
    """Training batches from ``start_step`` on, at its exact position."""
    return data_lib.pipeline.create_train_dataset(
        self.source, self.config, shard=self.shard,
        steps_per_epoch=self.steps_per_epoch, num_epochs=self.num_epochs,
        start_step=start_step, input_kind=self.input_kind, standardize=False)

  def eval_dataset(self, split: str):
    """(dataset, num_batches): every example of `split` once, padded."""
    return data_lib.pipeline.create_eval_dataset(
        self.source, split, self.config, shard=self.eval_shard,
        input_kind=self.input_kind, standardize=False)

  def evaluate(self, state: steps.TrainState, split: str) -> dict[str, float]:
    """Metrics over every example of `split` exactly once."""
    ds, num_batches = self.eval_dataset(split)
    results = self.evaluate_batches(state, data_lib.pipeline.as_numpy(ds))
    results["num_batches"] = num_batches
    return results

  def evaluate_batches(self, state: steps.TrainState,
                       batches: Iterable[dict[str, np.ndarray]]
                       ) -> dict[str, float]:
    """Metrics over host batches (with a ``mask``): a few steps in flight,
    merged on the host as they finish (``jaxattn/dispatch.py``)."""
    total = dispatch.merged(
        self.eval_fn(state, parallel.global_batch(batch, self.batch_sharding))
        for batch in batches)
    results = {k: float(v) for k, v in total.compute().items()}
    results["num_examples"] = int(total.loss.count)
    return results


# ----------------------------------------------------------------------------
# Resolving a config against its data.
# ----------------------------------------------------------------------------
def get_source(config: ml_collections.ConfigDict
               ) -> data_lib.sources.DataSource:
  """config.dataset's source, after importing config.source_modules (whose
  import registers their kinds: sources.register_source). Without the data
  extra: MissingDataExtra."""
  import importlib  # pylint: disable=g-import-not-at-top
  sources = data_lib.sources  # First: TensorFlow's absence is named as such.
  modules = config.get("source_modules", ())  # Absent from older workdirs.
  for module in [modules] if isinstance(modules, str) else modules:
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise data_lib.DatasetError(
          f"config.source_modules: cannot import {module!r} ({e}). List "
          "importable module names, e.g. --config.source_modules="
          "'(\"my_pkg.my_sources\",)', with the module's package installed "
          "or its parent directory on PYTHONPATH.") from None
  return sources.get_source(config.dataset, data_dir=config.data_dir or None,
                            manual_dir=config.manual_dir or None,
                            download=config.download)


def metadata_source(config: ml_collections.ConfigDict):
  """The dataset's classes and shapes without reading (or fetching) data.

  A TFDS dataset's come from its builder's code (nothing is downloaded);
  without the data extra, the datasets the bundled configs name are known
  anyway (``jaxattn.data.metadata``). An image folder that is absent (or
  cannot be read without the extra) is assumed RGB when the config fixes the
  classes (seed 001's 1000-way head).
  """
  kind, _, name = config.dataset.partition(":")
  try:
    if kind == "tfds":
      return data_lib.sources.MockSource(name)
    return get_source(config)
  except data_lib.MissingDataExtra:
    known = data_lib.metadata.known(config.dataset)
    if known is not None:
      logging.info("%s: classes and image shape from jaxattn's table "
                   "(TensorFlow and TFDS are not installed).", config.dataset)
      return known
    if kind != "folder" or not config.num_classes:
      raise
    reason = "TensorFlow is not installed"
  except data_lib.DatasetError as e:
    if kind != "folder" or not config.num_classes:
      raise
    reason = str(e)
  logging.warning("%s cannot be read here (%s): assuming RGB images and "
                  "config.num_classes=%d.", config.dataset, reason,
                  config.num_classes)
  return data_lib.metadata.assumed_rgb(config.dataset, config.num_classes)


def resolve_config(config: ml_collections.ConfigDict, source, *,
                   splits: tuple[str, ...] = ("train_split", "val_split")
                   ) -> ml_collections.ConfigDict:
  """Fills what the dataset decides (classes, channels) and checks the rest.

  ``splits`` names the config keys whose splits must exist in the source
  (none for callers that only have the dataset's metadata).
  """
  config = ml_collections.ConfigDict(config.to_dict())  # Never edit the caller's.
  configlib.check_duration(config)
  if not config.num_classes:
    config.num_classes = source.num_classes
  elif config.num_classes < source.num_classes:
    raise configlib.ConfigError(
        f"config.num_classes={config.num_classes} but {source.name} has "
        f"{source.num_classes} classes; set --config.num_classes=0 to use the "
        "dataset's count.")
  with config.unlocked():
    config.num_channels = source.image_shape[2]
    config.class_names = list(source.class_names)
  if "val_split" in splits and config.test_split and not source.has_split(
      config.test_split):
    # A folder of training images has no test split; say so, don't fail.
    logging.warning("config.test_split=%r is not a split of %s (splits: %s); "
                    "the final test evaluation is skipped.", config.test_split,
                    source.name, source.split_names)
    config.test_split = ""
  for split_key in splits:
    if config[split_key]:
      try:
        source.num_examples(config[split_key])
      except data_lib.DatasetError as e:
        raise data_lib.DatasetError(
            f"config.{split_key}={config[split_key]!r}: {e}") from None
  if len(config.image_size) != 2 or min(config.image_size) <= 0:
    raise configlib.ConfigError(f"config.image_size must be (height, width), "
                                f"got {config.image_size}.")
  configlib.crop_impl(config)
  configlib.input_threads(config)
  channels = config.num_channels
  for key in ("pixel_mean", "pixel_std"):
    if len(config[key]) not in (1, channels):
      raise configlib.ConfigError(
          f"config.{key} has {len(config[key])} values; {source.name} images "
          f"have {channels} channel(s).")
  return config


COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
MATMUL_PRECISIONS = ("default", "high", "highest")


def resolve_compute_dtype(value: str, platform: str) -> str:
  """``config.compute_dtype`` on ``platform``: "auto" is bfloat16 where the
  matrix units are built for it (GPUs, TPUs) and float32 on CPUs, where
  bfloat16 is emulated and no faster for these models."""
  if value not in COMPUTE_DTYPES:
    raise configlib.ConfigError(
        f"config.compute_dtype={value!r} is not one of "
        f"{', '.join(COMPUTE_DTYPES)}.")
  if value != "auto":
    return value
  return "float32" if platform == "cpu" else "bfloat16"


def check_matmul_precision(value: str) -> None:
  if value not in MATMUL_PRECISIONS:
    raise configlib.ConfigError(
        f"config.matmul_precision={value!r} is not one of "
        f"{', '.join(MATMUL_PRECISIONS)} (jax.default_matmul_precision).")


def build_model(config: ml_collections.ConfigDict):
  """The registered model, with the classes and compute dtype of the config."""
  kwargs = dict(config.model)
  name = kwargs.pop("name")
  dtype = resolve_compute_dtype(config.compute_dtype,
                                jax.devices()[0].platform)
  return create_model(name, num_classes=config.num_classes,
                      dtype=jnp.dtype(dtype), **kwargs)
