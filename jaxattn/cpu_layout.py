"""How many of a CPU host's JAX devices a run's mesh spans, measured per model.

``cpu_defaults`` splits a CPU-only host into one JAX device per core. That is
the fastest layout for small models, whose step is mostly single-threaded
XLA:CPU work, but not for large ones: every device runs the whole replicated
optimizer update and the step all-reduces every gradient, so SL-ResNet-50
(46.7 M parameters) trains a third slower on two devices than on one of
them (benchmarks/README.md, "Device layout"). And a batch must divide by the
mesh's device count. So, when ``cpu_defaults`` chose the device count (not
the user), the training mesh spans the number of devices that *measured*
fastest for this model on this host:

* the candidates are the device counts ``k <= cores`` that divide both the
  batch size and the eval batch size (1 always does, so the project's own
  configs never fail on a 3-, 6- or 12-core host);
* each candidate's real train step (the same ``Experiment`` jit, shardings
  and donation as training, on synthetic batches) is compiled, then all are
  timed in interleaved rounds of about half a second each (a few seconds in
  all); the fastest wins, fewer devices on a near tie;
* the result is cached in ``~/.cache/jaxattn/cpu_layout.json``
  (``JAXATTN_CPU_LAYOUT_CACHE`` moves it), keyed by the host's CPU model and
  core count, the jax/jaxlib versions, ``XLA_FLAGS`` and every config key
  that shapes the step, so a model is probed once per machine.

Commands that do not train (evaluation, predict, explain, the converter)
never probe: they use the cached choice when there is one, else the largest
candidate. ``--jax_num_cpu_devices=N`` (or the XLA flag) makes the mesh span
exactly N devices, and multi-process jobs always use every device.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import platform
import statistics
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from jaxattn import cpu_defaults

CACHE_VAR = "JAXATTN_CPU_LAYOUT_CACHE"
# A smaller layout within this fraction of the fastest wins: fewer devices
# hold fewer replicas and run fewer collectives, for the same speed.
NEAR_TIE = 0.03
# The candidates are timed in PROBE_ROUNDS interleaved rounds, so that a
# load change on the host hits them alike; in each, a candidate runs steps
# for PROBE_BLOCK_S seconds (at least PROBE_MIN_STEPS), after warm-up steps
# for PROBE_WARMUP_S. Its rate is the median step time over all rounds.
# (Three steps of each, one after the other, picked the slower layout for
# SE-CNN and ViT on 2026-12-06: 25% and 15% slower; benchmarks/README.md.)
PROBE_ROUNDS = 3
PROBE_BLOCK_S = 0.5
PROBE_WARMUP_S = 0.5
PROBE_MIN_STEPS = 2

# The config keys that change what one train step costs. Anything else
# (data location, duration, learning rate, logging) leaves the probe's
# answer valid.
STEP_KEYS = ("model", "batch_size", "eval_batch_size", "image_size",
             "num_channels", "num_classes", "compute_dtype", "optimizer",
             "grad_accum_steps", "ema_decay", "mixup", "frozen_params",
             "sharding_rules", "fsdp_min_size_mb", "parallel",
             "cache_backbone_features", "grad_clip_norm", "grad_clip_mode",
             "model_outputs", "loss_weights", "kernels")


@dataclasses.dataclass(frozen=True)
class Layout:
  """The mesh's device count and how it was decided (for the log)."""

  num_devices: int
  how: str
  images_per_s: dict[int, float] = dataclasses.field(default_factory=dict)


def applies() -> bool:
  """Whether the mesh may span fewer devices than JAX has: a CPU-only,
  one-process run whose device count cpu_defaults chose."""
  return (cpu_defaults.chose_device_count() and jax.process_count() == 1
          and jax.default_backend() == "cpu" and jax.device_count() > 1)


def candidates(num_devices: int, batch_sizes: tuple[int, ...]) -> list[int]:
  """Device counts ``k <= num_devices`` that divide every batch size: 1,
  the powers of two and the largest (on a many-core host the others add
  compiles, not information)."""
  divisors = [k for k in range(1, num_devices + 1)
              if all(b > 0 and b % k == 0 for b in batch_sizes)] or [1]
  return [k for k in divisors
          if k == 1 or k & (k - 1) == 0 or k == divisors[-1]]


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def cache_key(config: ml_collections.ConfigDict, num_devices: int) -> str:
  """The host, the JAX build and the step-shaping config, as one string."""
  import jaxlib  # pylint: disable=g-import-not-at-top
  step = {k: config.get(k) for k in STEP_KEYS}
  step = json.loads(json.dumps(
      {k: v.to_dict() if hasattr(v, "to_dict") else v for k, v in step.items()},
      sort_keys=True, default=list))
  what = dict(cpu=_cpu_model(), devices=num_devices, jax=jax.__version__,
              jaxlib=jaxlib.__version__,
              xla_flags=os.environ.get("XLA_FLAGS", ""), step=step)
  text = json.dumps(what, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path() -> str:
  return os.environ.get(CACHE_VAR) or os.path.join(
      os.path.expanduser("~"), ".cache", "jaxattn", "cpu_layout.json")


def _read_cache() -> dict[str, Any]:
  try:
    with open(cache_path()) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}  # Absent or unreadable: probe again.


def _write_cache(key: str, entry: dict[str, Any]) -> None:
  path = cache_path()
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cache = _read_cache()
    cache[key] = entry
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
      json.dump(cache, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
  except OSError as e:  # A read-only home only costs a probe next time.
    logging.warning("Could not cache the CPU layout in %s: %s", path, e)


def choose(config: ml_collections.ConfigDict, *, probe: bool) -> Layout | None:
  """The mesh's device count for ``config``; None: every device (the rule
  does not apply). ``probe``: measure the candidates when nothing is cached
  (training and bench); else the largest candidate."""
  if not applies():
    return None
  num_devices = jax.device_count()
  options = candidates(num_devices, (config.batch_size,
                                     config.eval_batch_size))
  if len(options) == 1:
    return Layout(options[0], "the only device count that divides the "
                  f"batch sizes ({config.batch_size}, "
                  f"{config.eval_batch_size})")
  key = cache_key(config, num_devices)
  cached = _read_cache().get(key)
  if cached and cached.get("num_devices") in options:
    return Layout(cached["num_devices"], f"measured before ({cache_path()})",
                  {int(k): v for k, v in cached["images_per_s"].items()})
  if not probe:
    return Layout(options[-1], "the most devices that divide the batch sizes "
                  "(no measured layout for this model yet)")
  rates = measure(config, options)
  best = pick(rates)
  _write_cache(key, dict(num_devices=best, images_per_s=rates,
                         cpu=_cpu_model(), model=config.model.name,
                         batch_size=config.batch_size,
                         measured=time.strftime("%Y-%m-%d %H:%M:%S")))
  return Layout(best, "measured now", rates)


def pick(images_per_s: dict[int, float]) -> int:
  """The fastest device count, or fewer devices within NEAR_TIE of it."""
  fastest = max(images_per_s.values())
  return min(k for k, rate in images_per_s.items()
             if rate >= (1 - NEAR_TIE) * fastest)


def measure(config: ml_collections.ConfigDict,
            options: list[int]) -> dict[int, float]:
  """Train images/s of the config's real step on each device count."""
  logging.info("CPU layout: timing %s's train step on %s of %d devices "
               "(once per model and host)...", config.model.name,
               " and ".join(map(str, options)), jax.device_count())
  steppers = {k: _Stepper(config, k) for k in options}
  for stepper in steppers.values():
    stepper.run_for(PROBE_WARMUP_S)
    stepper.seconds.clear()
  for _ in range(PROBE_ROUNDS):
    for stepper in steppers.values():
      stepper.run_for(PROBE_BLOCK_S)
  return {k: config.batch_size / statistics.median(stepper.seconds)
          for k, stepper in steppers.items()}


class _Stepper:
  """The config's compiled train step on ``num_devices``, with its state."""

  def __init__(self, config: ml_collections.ConfigDict, num_devices: int):
    from jaxattn import experiment  # pylint: disable=g-import-not-at-top
    config = ml_collections.ConfigDict(config.to_dict())
    with config.unlocked():
      config.init_from = ""  # Timing needs no pretrained weights.
      config.pretrained_required = False
    exp = experiment.Experiment(config, data="none", mesh_devices=num_devices)
    self.state = exp.init_state()
    if config.get("cache_backbone_features"):
      # Training runs the frozen backbone once, then steps the head on its
      # cached outputs: those steps are what the layout is for.
      exp = exp.with_features(None)
    self.batch = exp.synthetic_batch(config.batch_size)
    self.train_fn = exp.train_fn.lower(self.state, self.batch).compile()
    self.seconds: list[float] = []

  def run_for(self, budget_s: float) -> None:
    """Steps, each timed to completion, for ``budget_s`` seconds."""
    start = time.perf_counter()
    steps = 0
    while steps < PROBE_MIN_STEPS or time.perf_counter() - start < budget_s:
      begin = time.perf_counter()
      self.state, _ = self.train_fn(self.state, self.batch)
      jax.block_until_ready(self.state)
      self.seconds.append(time.perf_counter() - begin)
      steps += 1


@functools.lru_cache(maxsize=None)
def _logged(message: str) -> None:
  logging.info("%s", message)


def log(layout: Layout | None) -> None:
  """One line per process and decision."""
  if layout is None:
    return
  rates = ", ".join(f"{k} device{'s' * (k > 1)}: {v:,.1f} img/s"
                    for k, v in sorted(layout.images_per_s.items()))
  _logged(f"CPU layout: the mesh spans {layout.num_devices} of "
          f"{jax.device_count()} devices ({layout.how}"
          f"{'; ' + rates if rates else ''}). --jax_num_cpu_devices=N uses "
          "exactly N.")
