r"""Soak: does a multi-device CPU run abort in XLA's collective rendezvous?

With two or more JAX CPU devices, XLA:CPU aborted jaxattn runs with
"Termination timeout for all reduce ... 40 seconds exceeded" (rc 134), loaded
or idle. The cause (``jaxattn/dispatch.py``): XLA's CPU client runs each
device's part of a multi-device program, and the dispatch of the next one,
on one pool of max(cores, devices) threads, and a dispatch blocks its pool
thread while its device already has 32 computations in flight. JAX's
asynchronous dispatch gets there whenever the host runs far ahead (train
steps, CLU metric merges on the devices, evaluation batches). One blocked
dispatch then leaves another device's part of the running program without a
thread, and the devices that did start it wait for that one in their
all-reduce until XLA aborts. ``gdb -p PID -batch -ex "thread apply all bt"``
on a stuck run shows exactly that: one pool thread in
``Semaphore::ScopedAcquire`` (a dispatch), one in ``BlockUntilReady``
(device 0's part), an intra-op thread in ``InProcessCommunicator::AllReduce``,
and device 1's part in no thread.

The fix keeps the host at most ``dispatch.DEPTH`` steps ahead and merges the
metrics on the host. This runs, in a fresh process per trial and for
``--seconds`` each, either loop over the trainer's own pieces (a config's
jitted train and eval steps on synthetic batches, ``RunCheckpoints``'
asynchronous saves):

* ``--loop=jaxattn``: the project's (``periodic.StepMetrics`` and
  ``Experiment.evaluate_batches``, as ``train.py`` runs them);
* ``--loop=unbounded``: the loop before the fix (every step dispatched at
  once, CLU metrics merged on the devices);

with XLA's own thread counts (``--threads=xla``, the default) or two client
threads per device (``--threads=two_per_device``, the earlier workaround),
optionally beside ``--busy`` processes that spin on the cores::

  python benchmarks/cpu_collectives_soak.py --loop=unbounded --trials=3
  python benchmarks/cpu_collectives_soak.py --trials=3 --busy=2

``--workload=mlp`` runs the smallest program that stalls (an MLP's
data-parallel step) in the same two loops. A trial reports ``ok`` or
``aborted`` (and after how many seconds). XLA's abort comes
``--terminate_s`` after the stall (40 s is XLA's default; the benchmark uses
15 s to find stalls sooner: a healthy step here takes well under a second
even on a loaded host).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_enum("workload", "trainer", ["trainer", "mlp"],
                  "trainer: a config's train and eval steps, metric merges "
                  "and checkpoints; mlp: the smallest program that stalls "
                  "(an MLP's data-parallel step and eager metric sums).")
flags.DEFINE_string("config", "configs/cifar10_convvit.py",
                    "--workload=trainer: the config whose steps run.")
flags.DEFINE_integer("devices", 2, "JAX CPU devices.")
flags.DEFINE_integer("batch", 32, "Train and eval batch size: small batches "
                     "make many short programs, the traffic that stalls.")
flags.DEFINE_enum("loop", "jaxattn", ["jaxattn", "unbounded"],
                  "jaxattn: the project's loop (at most dispatch.DEPTH steps "
                  "in flight, metrics merged on the host); unbounded: every "
                  "step dispatched at once, metrics merged on the devices.")
flags.DEFINE_enum("threads", "xla", ["xla", "two_per_device"],
                  "XLA CPU client threads: XLA's own (max(cores, devices)) "
                  "or two per device (PJRT_NPROC).")
flags.DEFINE_integer("trials", 3, "Fresh processes, one after the other.")
flags.DEFINE_integer("seconds", 120, "Length of each trial.")
flags.DEFINE_integer("busy", 0, "Processes spinning on the CPU beside it.")
flags.DEFINE_integer("terminate_s", 15, "XLA's rendezvous abort timeout.")
flags.DEFINE_string("json", "", "Also write the results here.")
flags.DEFINE_bool("child", False, "Internal: run one trial in this process.")

FLAGS = flags.FLAGS


def _mlp_body() -> None:
  """A 6-layer MLP's data-parallel step (one all-reduce), sums of its loss
  after each step, and 20 eval steps every 50."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jaxattn import dispatch, parallel
  mesh = parallel.create_mesh()
  replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  width, batch = 1024, 256

  def loss_fn(params, x):
    for w in params:
      x = jnp.tanh(x @ w)
    return jnp.mean(x ** 2)

  def train(params, x):
    loss, grads = jax.value_and_grad(loss_fn)(params, x)
    return [p - 1e-3 * g for p, g in zip(params, grads)], loss

  train = jax.jit(train, in_shardings=(replicated, sharded),
                  out_shardings=(replicated, replicated), donate_argnums=0)
  evaluate = jax.jit(loss_fn, in_shardings=(replicated, sharded),
                     out_shardings=replicated)
  params = jax.device_put([jnp.full((width, width), 0.01 + i * 1e-4)
                           for i in range(6)], replicated)
  rng = np.random.default_rng(0)
  bounded = FLAGS.loop == "jaxattn"
  start, step = time.time(), 0
  while time.time() - start < FLAGS.seconds:
    window, total = dispatch.Window(), 0.0
    for _ in range(50):
      x = parallel.global_batch(
          rng.standard_normal((batch, width), dtype=np.float32), sharded)
      params, loss = train(params, x)
      if bounded:  # Losses come back to the host, two steps behind.
        total += sum(window.push(loss))
      else:  # Summed on the devices: one more program per step.
        total = total + loss
      step += 1
    total += sum(window.drain())
    if bounded:
      evals = sum(dispatch.host_results(evaluate(params, x) for _ in range(20)))
    else:
      evals = sum(evaluate(params, x) for _ in range(20))
    print(f"{time.time() - start:7.1f} s  step {step}  train loss "
          f"{float(total):.4f}  eval loss {float(evals):.4f}", flush=True)


def _trial_body() -> None:
  """One trial: the trainer's multi-device traffic, as fast as it goes."""
  # pylint: disable=g-import-not-at-top
  import jax
  from jaxattn import checkpointing, configlib, cpu_defaults, experiment
  from jaxattn import periodic
  jax.config.update("jax_num_cpu_devices", FLAGS.devices)
  cpu_defaults.configure()
  if FLAGS.workload == "mlp":
    _mlp_body()
    return
  config = configlib.load(os.path.join(_REPO, FLAGS.config),
                          {"batch_size": FLAGS.batch,
                           "eval_batch_size": FLAGS.batch})
  exp = experiment.Experiment(config, data="metadata",
                              mesh_devices=FLAGS.devices)
  state = exp.init_state()
  train_batch = exp.synthetic_batch(config.batch_size)
  eval_batch = exp.synthetic_batch(config.eval_batch_size, with_mask=True)
  host_eval_batch = jax.device_get(eval_batch)
  ckpt = checkpointing.RunCheckpoints(tempfile.mkdtemp(), keep=2)
  start, step = time.time(), 0
  while time.time() - start < FLAGS.seconds:
    if FLAGS.loop == "jaxattn":  # As train.py runs them.
      log = _Merged()
      step_metrics = periodic.StepMetrics(log)
      for _ in range(20):
        state, metrics = exp.train_fn(state, train_batch)
        step_metrics.add(metrics)
        step += 1
      step_metrics.flush()
      train_loss = log.total.compute()["loss"]
      eval_loss = exp.evaluate_batches(state, [host_eval_batch] * 5)["loss"]
    else:  # Dispatched ahead; merged on the devices.
      merged = None
      for _ in range(20):
        state, metrics = exp.train_fn(state, train_batch)
        merged = metrics if merged is None else merged.merge(metrics)
        step += 1
      total = None
      for _ in range(5):
        batch_metrics = exp.eval_fn(state, eval_batch)
        total = batch_metrics if total is None else total.merge(batch_metrics)
      train_loss = merged.compute()["loss"]
      eval_loss = total.compute()["loss"]
    ckpt.save(step, state, {"step": step})  # Asynchronous.
    print(f"{time.time() - start:7.1f} s  step {step}  train loss "
          f"{float(train_loss):.4f}  eval loss {float(eval_loss):.4f}",
          flush=True)
  ckpt.wait()
  ckpt.close()


class _Merged:
  """A log for ``periodic.StepMetrics``: the merge of what it is given."""

  def __init__(self):
    self.total = None

  def add(self, metrics) -> None:
    self.total = metrics if self.total is None else self.total.merge(metrics)


def _run_trial() -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join([
      *env.get("XLA_FLAGS", "").split(),
      f"--xla_cpu_collective_call_terminate_timeout_seconds={FLAGS.terminate_s}"])
  env.pop("PJRT_NPROC", None)
  env.pop("NPROC", None)
  if FLAGS.threads == "two_per_device":
    env["PJRT_NPROC"] = str(2 * FLAGS.devices)
  busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
          for _ in range(FLAGS.busy)]
  start = time.time()
  try:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *sys.argv[1:]], env=env,
        cwd=_REPO, capture_output=True, text=True,
        timeout=FLAGS.seconds + 600)
  finally:
    for p in busy:
      p.kill()
  seconds = time.time() - start
  lines = [l for l in proc.stdout.splitlines() if " step " in l]
  aborted = "Termination timeout" in proc.stderr
  return dict(rc=proc.returncode, seconds=round(seconds, 1),
              outcome="aborted" if aborted else
              ("ok" if proc.returncode == 0 else "failed"),
              last_progress=lines[-1].strip() if lines else "",
              error=proc.stderr[-1500:] if proc.returncode else "")


def main(argv):
  del argv
  if FLAGS.child:
    _trial_body()
    return
  results = []
  for i in range(FLAGS.trials):
    result = _run_trial()
    results.append(result)
    print(f"trial {i + 1}/{FLAGS.trials}: {result['outcome']} (rc "
          f"{result['rc']}) after {result['seconds']} s; last: "
          f"{result['last_progress']}", flush=True)
  summary = dict(workload=FLAGS.workload, config=FLAGS.config,
                 batch=FLAGS.batch, devices=FLAGS.devices,
                 loop=FLAGS.loop, threads=FLAGS.threads, busy=FLAGS.busy,
                 seconds_per_trial=FLAGS.seconds,
                 terminate_s=FLAGS.terminate_s, trials=results,
                 aborted=sum(r["outcome"] == "aborted" for r in results))
  print(json.dumps({k: v for k, v in summary.items() if k != "trials"}))
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(summary, f, indent=2)
  sys.exit(1 if any(r["outcome"] != "ok" for r in results) else 0)


if __name__ == "__main__":
  app.run(main)
