"""Configs: loading them, and the building blocks of every ``configs/*.py``.

A config file defines ``get_config(arg)``. ``arg`` is the short string after
the colon in ``--config=configs/x.py:smoke,epochs=5``; :func:`parse_arg` turns
it into typed values. :func:`base_config` holds every key the trainer reads,
with its default, so a typo in ``--config.KEY=VALUE`` fails at once (a usage
error naming the closest key and the valid ones) and a config file only states
what differs.

One loader for everything: the absl commands define ``--config`` with
:func:`define_config_flag` and read it with :func:`config_from_flag`; the
converter, the tests and the benchmarks call :func:`load` with the same
``FILE[:ARG]`` and ``KEY=VALUE`` strings. Both are ml_collections'
``config_flags``, so a value means the same everywhere: it takes the type of
the key it overrides, and booleans are absl's (true/false, t/f, 1/0).
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags
# The module behind config_flags, for its flag class (see _ConfigFileFlag).
from ml_collections.config_flags import config_flags as config_flags_impl
from ml_collections.config_flags import config_path

from jaxattn.errors import BadInputError

_BOOLEAN = flags.BooleanParser()
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# configs/ of a checkout; an installed wheel carries the same files as
# jaxattn/configs/ (pyproject.toml maps the package there).
CONFIGS_DIR = os.path.join(os.path.dirname(_PACKAGE_DIR), "configs")
_CONFIG_DIRS = (CONFIGS_DIR, os.path.join(_PACKAGE_DIR, "configs"))


def find_config(spec: str) -> str:
  """``FILE[:ARG]``, or a bundled config's ``NAME[.py][:ARG]`` as its path.

  A path that exists is kept; otherwise a bare name (``cifar10_convvit``)
  is looked up among the configs that ship with jaxattn, so an installed
  package trains without a checkout. Anything else is returned as given
  (the loader then says the file does not exist).
  """
  path, sep, arg = spec.partition(":")
  if os.path.exists(path) or os.sep in path or "/" in path:
    return spec
  name = path if path.endswith(".py") else f"{path}.py"
  for directory in _CONFIG_DIRS:
    candidate = os.path.join(directory, name)
    if os.path.isfile(candidate):
      return candidate + sep + arg
  return spec


def expand_bundled_config(argv: Sequence[str], name: str = "config"
                          ) -> list[str]:
  """argv with ``--config=NAME[:ARG]`` resolved by :func:`find_config`."""
  out, argv = [], list(argv)
  for i, token in enumerate(argv):
    if token.startswith(f"--{name}="):
      token = f"--{name}=" + find_config(token.split("=", 1)[1])
    elif i and argv[i - 1] == f"--{name}":
      token = find_config(token)
    out.append(token)
  return out


class ConfigError(BadInputError, ValueError):
  """A config that cannot be loaded; the message says what to pass instead."""


class ConfigUsageError(BadInputError, flags.IllegalFlagValueError):
  """A ``--config`` argument or ``--config.KEY`` the user must change; the
  message says how. absl's ``app.run`` prints it as a usage error."""


def unknown_key_message(config: ml_collections.ConfigDict, path: str,
                        name: str = "config") -> str | None:
  """What is wrong with the override ``--NAME.PATH``, if PATH is unknown.

  Names the first part of PATH that the config lacks, the closest key at
  that level (difflib), and every key of that level; or the value that PATH
  goes through as if it held keys. None when the whole path exists (or
  indexes a list or tuple, which is not checked here).
  """
  holder, where = config, name
  for field in config_path.split(path):
    if not isinstance(field, str):  # An index into a list or tuple.
      return None
    if not isinstance(holder, ml_collections.ConfigDict):
      return (f"--{name}.{path}: {where}={holder!r} is a value, not a group "
              f"of keys; set it with --{where}=VALUE.")
    if field not in holder:
      keys = sorted(holder.keys())
      close = difflib.get_close_matches(field, keys, n=1)
      hint = f" Did you mean --{where}.{close[0]}?" if close else ""
      return (f"--{name}.{path}: {where} has no key {field!r}.{hint} "
              f"Keys of {where}: {', '.join(keys)}.")
    holder, where = holder[field], f"{where}.{field}"
  return None


class _ConfigFileFlag(config_flags_impl._ConfigFlag):  # pylint: disable=protected-access
  """ml_collections' ``--config`` flag, with a usage error for an unknown key.

  ml_collections lets the ConfigDict's AttributeError / KeyError for an
  unknown ``--config.KEY`` escape from flag parsing; absl's ``app.run`` turns
  only ``flags.Error`` into a short usage message, so the user got a 50-line
  traceback. Here that error becomes a ``ConfigUsageError`` (a
  ``flags.Error``) naming the key, the closest valid one and all of them;
  so does a ConfigError of ``get_config`` (an unknown config argument),
  which config_flags would print with its traceback.
  The base class is private to ml_collections (pinned <2 in pyproject.toml);
  tests/test_bad_input.py runs the commands through it.
  """

  def _parse(self, argument):
    try:
      return super()._parse(argument)
    except flags.IllegalFlagValueError as e:
      # config_flags re-raises any ValueError of get_config() as the same
      # type with its traceback for message; the first ConfigError raised
      # (parse_arg: an unknown config argument) is the user's mistake, and
      # its own message says what to pass.
      first_config_error, cause = None, e.__context__
      while cause is not None:
        if isinstance(cause, ConfigError):
          first_config_error = cause
        cause = cause.__context__
      if first_config_error is None:
        raise
      raise ConfigUsageError(
          f"--{self.name}={argument}: {first_config_error}") from None
    except (AttributeError, KeyError):
      # The config parsed before the overrides were applied; parse it again
      # (the error path only) to find which override names no key.
      config = self.parser.parse(argument)
      for path in self._GetOverrides(self._GetArgv()):
        message = unknown_key_message(config, path, self.name)
        if message:
          raise ConfigUsageError(message) from None
      raise


def define_config_flag(name: str = "config",
                       flag_values: flags.FlagValues = flags.FLAGS,
                       sys_argv: Sequence[str] | None = None) -> None:
  """``--config=FILE[:ARG]`` plus ``--config.KEY=VALUE`` overrides.

  ``config_flags.DEFINE_config_file``, with its flag class replaced by
  :class:`_ConfigFileFlag` so that an unknown key is a usage error.
  """
  flags.DEFINE_flag(_ConfigFileFlag(
      parser=config_flags_impl.ConfigFileFlagParser(name=name,
                                                     lock_config=True),
      serializer=flags.ArgumentSerializer(), name=name, default=None,
      help_string="Config file[:ARG], e.g. configs/quickstart.py:smoke; "
      "override keys with --config.KEY=VALUE.", flag_values=flag_values,
      sys_argv=sys_argv), flag_values)


def _known_configs() -> str:
  for directory in _CONFIG_DIRS:
    if os.path.isdir(directory):
      names = sorted(f[:-3] for f in os.listdir(directory)
                     if f.endswith(".py") and not f.startswith("_"))
      return (f"\nBundled configs (--config=NAME[:ARG], in {directory}): "
              f"{', '.join(names)}.")
  return ""


def config_from_flag(name: str = "config",
                     flag_values: flags.FlagValues = flags.FLAGS
                     ) -> ml_collections.ConfigDict:
  """The parsed ``--config``, or a ConfigError naming the configs that exist."""
  try:
    config = flag_values[name].value
    if config is not None:
      config.model.name  # pylint: disable=pointless-statement
  except (OSError, ValueError, AttributeError, KeyError) as e:
    reason = str(e).strip().splitlines()[-1].strip() if str(e) else repr(e)
    spec = config_flags.get_config_filename(flag_values[name])
    raise ConfigError(f"Cannot load --{name}={spec}: {reason}"
                      f"{_known_configs()}") from None
  if config is None:
    raise ConfigError(f"--{name}=configs/NAME.py[:ARG] is required."
                      f"{_known_configs()}")
  return config


def load(spec: str, overrides: Mapping[str, Any] | Sequence[str] = ()
         ) -> ml_collections.ConfigDict:
  """``get_config(ARG)`` of ``FILE[:ARG]``, with ``KEY=VALUE`` overrides.

  What ``--config=SPEC --config.KEY=VALUE ...`` gives on a command line:
  ``overrides`` is a dict ``{"batch_size": 64}`` or strings
  ``["batch_size=64"]``; values are parsed as command-line strings.
  """
  if isinstance(overrides, Mapping):
    overrides = [f"{k}={v}" for k, v in overrides.items()]
  spec = find_config(spec)
  argv = ["jaxattn", f"--config={spec}",
          *(f"--config.{o}" for o in overrides)]
  flag_values = flags.FlagValues()
  define_config_flag(flag_values=flag_values, sys_argv=argv)
  try:
    flag_values(argv)
  except ConfigUsageError as e:  # Its message names the flag and the fix.
    raise ConfigError(str(e)) from None
  except (flags.Error, AttributeError, KeyError) as e:
    # config_flags wraps a get_config() error in its traceback: the last
    # line is the error itself.
    reason = str(e).strip().splitlines()[-1].strip().strip("\"'")
    raise ConfigError(f"--config={spec}: {reason}") from None
  return config_from_flag(flag_values=flag_values)


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses ``"smoke,epochs=5,batch=64"`` against typed defaults.

  A bare key means True (for boolean keys). Values take the type of their
  default (bool, int, float or str; booleans as in ``--config.KEY=VALUE``).
  Unknown keys raise a ConfigError listing the valid ones (a usage error on
  the command line).
  """
  values = dict(defaults)
  for token in filter(None, (t.strip() for t in (arg or "").split(","))):
    key, sep, raw = token.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ConfigError(
          f"Unknown config argument {key!r} in {arg!r}. Valid arguments: "
          f"{', '.join(f'{k}={v!r}' for k, v in defaults.items())}.")
    default = defaults[key]
    if not sep:
      if not isinstance(default, bool):
        raise ConfigError(f"Config argument {key!r} needs a value: {key}=...")
      values[key] = True
      continue
    raw = raw.strip()
    try:
      if isinstance(default, bool):
        values[key] = _BOOLEAN.parse(raw)
      elif isinstance(default, int):
        values[key] = int(raw)
      elif isinstance(default, float):
        values[key] = float(raw)
      else:
        values[key] = raw
    except ValueError:
      raise ConfigError(
          f"Config argument {key}={raw!r} is not a valid "
          f"{type(default).__name__}.") from None
  return ml_collections.ConfigDict(values)


def base_config() -> ml_collections.ConfigDict:
  """Every key the trainer reads, with neutral defaults."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Data. See jaxattn/data/sources.py for the dataset string syntax.
  c.dataset = "offline:digits"
  # Importable modules (e.g. ("my_pkg.my_sources",)) imported before
  # `dataset` is resolved: each may add a kind of dataset string with
  # jaxattn.data.sources.register_source, without editing this package.
  c.source_modules = ()
  c.data_dir = ""  # TFDS data_dir; "" for TFDS's default.
  c.manual_dir = ""  # TFDS manual_dir for datasets that need one.
  c.download = True
  c.train_split = "train"
  c.val_split = "test"  # Evaluated every eval interval; "" for none.
  c.test_split = ""  # Evaluated once at the end when set; "" for none.
  c.image_size = (32, 32)  # Model input (H, W); images are resized to it.
  c.pixel_mean = (0.0,)  # In [0, 1] units, one per channel (or one for all).
  c.pixel_std = (1.0,)
  # Evaluation (and predict, explain, the feature cache): 0 resizes straight
  # to image_size; f in (0, 1] resizes keeping the aspect ratio so the
  # image covers image_size / f (for a square image_size: the shorter side
  # to image_size / f), then centre-crops image_size (ImageNet's 0.875).
  c.eval_crop_fraction = 0.0
  c.cache = True  # Keep decoded images in memory (small datasets).
  c.shuffle_buffer = 50_000
  # Threads of this process's own tf.data pool; 0: one per core this process
  # may run on (os.sched_getaffinity: its share under taskset or SLURM's
  # --cpu-bind), not one per core of the machine.
  c.input_threads = 0
  # Train-time augmentation, on the host (tf.data) except RandomErasing,
  # applied with the standardisation inside the jitted step.
  # crop_impl: how random_resized_crop crops (area crop_scale, aspect ratio
  # crop_ratio) and resizes to image_size:
  #   "tf_fast"      TF's Inception crop (sample_distorted_bounding_box, a
  #                  JPEG decoded only inside the box, bilinear resize without
  #                  antialiasing; seed 000's own make_dataset), per image;
  #   "pillow_exact" torchvision's RandomResizedCrop with Pillow's antialiased
  #                  resampling, bit-exact with torchvision (the recipes of
  #                  the seeds that trained with torchvision keep it); several
  #                  times slower on large JPEGs (benchmarks/README.md).
  c.augment = ml_collections.ConfigDict(dict(
      random_resized_crop=False, crop_scale=(0.08, 1.0),
      crop_ratio=(3 / 4, 4 / 3), crop_impl="tf_fast", flip=False,
      rand_augment_ops=0, rand_augment_magnitude=9,
      color_jitter=(0.0, 0.0, 0.0), random_erasing=0.0))

  # Model: `name` picks the registered module; other keys go to it.
  c.model = ml_collections.ConfigDict(dict(name="conv_vit"))
  c.num_classes = 0  # 0: the dataset's class count.
  # The dtype activations are computed in: "auto" (bfloat16 on GPUs and
  # TPUs, float32 on CPUs), "float32", "bfloat16" or "float16". Parameters,
  # optimizer state, the loss and softmax statistics stay float32 at every
  # setting. A run records the resolved dtype in its config.json.
  c.compute_dtype = "auto"
  # float32 matmuls and convolutions (jax.default_matmul_precision):
  # "default" lets the platform use its fast path (TF32 on NVIDIA GPUs since
  # Ampere, bf16 passes on TPUs), "high" (TF32 / 3 bf16 passes), "highest"
  # (true float32). Applied to steps compiled for GPUs and TPUs; XLA:CPU
  # computes float32 in float32 at every setting.
  c.matmul_precision = "default"
  # How a few ops are computed (jaxattn/models/kernels.py): "auto" (the
  # XLA:CPU rewrites where the step is compiled for the CPU, the models' own
  # ops elsewhere), "plain" or "cpu".
  c.kernels = "auto"
  # Pretrained weights to start from (see jaxattn/pretrained.py); a config
  # whose model is useless without them sets pretrained_required.
  c.init_from = ""
  c.pretrained_required = False
  # Compute a frozen backbone's outputs once and train the head on them
  # (seed 000's hybrid; see jaxattn/feature_cache.py).
  c.cache_backbone_features = False

  # Duration: exactly one of num_epochs / num_steps is non-zero.
  c.num_epochs = 0
  c.num_steps = 0
  c.batch_size = 128  # Global, over all devices and processes.
  # The global batch the learning rates were set for (a recipe's own), and
  # whether to scale every learning rate of the schedule by batch_size /
  # reference_batch_size (the linear rule, Goyal et al. 2017) for a larger
  # batch on more devices. Off by default: the seeds' recipes are exact.
  c.reference_batch_size = 0  # 0: batch_size.
  c.scale_lr_with_batch = False
  c.eval_batch_size = 256

  # Optimisation.
  # weight_decay_exclude: regex over '/'-joined parameter paths that get no
  # weight decay, e.g. ".*(bias|scale|pos_embedding|class_token).*" (DeiT).
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam", b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
      momentum=0.9, nesterov=False, weight_decay_exclude=""))
  # Average the gradients of k steps, then update once (optax.MultiSteps):
  # batch_size * k in pieces of batch_size. Schedules still count steps.
  c.grad_accum_steps = 1
  # Weight EMA (optax.incremental_update after every update): 0 = off, else
  # e.g. 0.9999. With eval_ema, evaluation, the best checkpoint's choice and
  # jaxattn.load / predict / convert use the EMA weights.
  c.ema_decay = 0.0
  c.eval_ema = True
  # Mixup / CutMix in the train step, from the step's key (timm's Mixup,
  # batch mode): with probability `prob` a batch is mixed with its reverse,
  # by CutMix with probability switch_prob when both alphas are set. The
  # targets are mixed too, with config.label_smoothing. 0 alphas = off.
  c.mixup = ml_collections.ConfigDict(dict(
      mixup_alpha=0.0, cutmix_alpha=0.0, prob=1.0, switch_prob=0.5))
  c.schedule = ml_collections.ConfigDict(dict(
      name="constant", lr=1e-3, warmup_epochs=0.0, end_lr=0.0,
      knots=((0.0, 1.0),), decay_rate=0.1, decay_every_epochs=30.0,
      staircase=True,
      # In steps, overriding the epoch-based values when non-zero: warm-up
      # length, and the step where warmup_cosine reaches end_lr (default:
      # the last step). init_lr is where the warm-up starts.
      warmup_steps=0, decay_steps=0, init_lr=0.0))
  c.grad_clip_norm = 0.0  # 0 for no clipping.
  # "global": one norm over all gradients (torch.nn.utils.clip_grad_norm_);
  # "per_tensor": each gradient tensor separately (Keras' clipnorm).
  c.grad_clip_mode = "global"
  # Regex over '/'-joined parameter paths (e.g. "backbone/.*"): those
  # parameters are not trained. "" trains everything.
  c.frozen_params = ""
  c.label_smoothing = 0.0
  # Models that return a dict of named outputs (seed 000's hybrid): the loss
  # is sum(weight * cross-entropy) over loss_weights; metrics use
  # metric_output. model_outputs says whether outputs are "logits" or
  # softmax "probabilities".
  c.model_outputs = "logits"
  c.loss_weights = ml_collections.ConfigDict()
  c.metric_output = ""

  # Parallelism: "jit" (one program over a Mesh, sharded batch) or "pmap"
  # (per-device program with explicit collectives, via jax.shard_map).
  # BatchNorm statistics follow the form: under "jit" they are those of the
  # global batch (as SyncBatchNorm); under "pmap" each device normalises
  # with its own slice's statistics and the running averages are averaged
  # across devices after the step (as DistributedDataParallel without
  # SyncBatchNorm).
  c.parallel = "jit"
  # Placement of the train state's leaves (see jaxattn/parallel.py): the
  # first (regex over the leaf's path, "replicate" | "fsdp") that matches.
  # ((".*", "fsdp"),) shards parameters and optimizer state over the data
  # axis (FSDP); needs parallel="jit".
  c.sharding_rules = ((".*", "replicate"),)
  c.fsdp_min_size_mb = 4.0  # Smaller tensors stay replicated under "fsdp".
  # Training order across processes. "global": every process reads the
  # whole split (encoded; it decodes only its rows) and takes its rows of
  # each global batch, so the data order, and the result, do not depend on
  # the number of processes. "per_process": each process reads only 1/N of
  # the split (less I/O for ImageNet-scale data; the order then depends on
  # the process count).
  c.input_order = "global"

  # Evaluation, early stopping, checkpoints, logging.
  c.eval_every_epochs = 1
  c.best_metric = "accuracy"  # Of the validation split; "loss" is also fine.
  c.early_stopping_patience = 0  # Evaluations without improvement; 0 = off.
  c.checkpoint_every_steps = 0  # 0: at every evaluation (end of epoch).
  c.keep_checkpoints = 3
  # Which checkpoint the final test-split evaluation (and the run report)
  # uses: "best" (by best_metric on the validation split, as seed 001's
  # Train.py reloads its best), or "last". Without a validation split there
  # is no best; the last is used.
  c.test_checkpoint = "best"
  c.log_every_steps = 50
  # A published curve to draw beside this run's in curves.png: the per-epoch
  # values of `tag` (e.g. "val_accuracy") that `label` reports, epoch 1
  # first. Set by the recipes that reproduce a seed; () = none.
  c.reference_curve = ml_collections.ConfigDict(dict(
      label="", tag="val_accuracy", per_epoch=()))
  # Trace these train steps with jax.profiler (CLU's periodic_actions.Profile)
  # into WORKDIR/plugins/profile, for TensorBoard's profile plugin: (first,
  # count), e.g. (10, 5); (0, 0) = off.
  c.profile_steps = (0, 0)
  # Also log to Weights & Biases when set (needs `pip install wandb`);
  # wandb_mode "offline" writes WORKDIR/wandb without a network.
  c.wandb_project = ""
  c.wandb_mode = "online"
  return c


CROP_IMPLS = ("tf_fast", "pillow_exact")


def crop_impl(config: ml_collections.ConfigDict) -> str:
  """config.augment.crop_impl, checked. A config saved before the key
  existed trained with "pillow_exact", the only crop then, and keeps it."""
  impl = config.augment.get("crop_impl", "pillow_exact")
  if impl not in CROP_IMPLS:
    raise ConfigError(f"config.augment.crop_impl={impl!r} must be one of "
                      f"{list(CROP_IMPLS)}.")
  return impl


def input_threads(config: ml_collections.ConfigDict) -> int:
  """config.input_threads, checked (0: chosen from the process's cores)."""
  threads = config.get("input_threads", 0)
  if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
    raise ConfigError(f"config.input_threads={threads!r} must be 0 (one "
                      "thread per core this process may use) or a positive "
                      "number of threads.")
  return threads


def check_duration(config: ml_collections.ConfigDict) -> None:
  """How long and how fast the run trains: a ConfigError unless it will.

  Exactly one of num_epochs / num_steps is set, and it is positive; the
  learning-rate schedule's rates and lengths are valid (``optim.check_schedule``).
  A negative duration or rate is accepted by the trainer and optax alike and
  gives a run that "finishes" having trained nothing, so it is refused here,
  when the config is resolved, before anything is written to the workdir.
  """
  for key in ("num_epochs", "num_steps"):
    value = config[key]
    if not (math.isfinite(value) and value >= 0):
      raise ConfigError(
          f"config.{key}={value} must be >= 0: train for num_epochs > 0 "
          f"epochs or num_steps > 0 steps, e.g. --config.{key}="
          f"{abs(value) if math.isfinite(value) else 10}.")
  if bool(config.num_epochs) == bool(config.num_steps):
    raise ConfigError(
        "Set exactly one of config.num_epochs and config.num_steps (got "
        f"num_epochs={config.num_epochs}, num_steps={config.num_steps}); "
        "to switch, zero the other, e.g. --config.num_epochs=0 "
        "--config.num_steps=1000.")
  # Imported here: loading a config file (which imports this module) should
  # not pull in JAX and optax.
  from jaxattn import optim  # pylint: disable=g-import-not-at-top
  try:
    optim.check_schedule(config.schedule)
  except ValueError as e:
    raise ConfigError(str(e)) from None
