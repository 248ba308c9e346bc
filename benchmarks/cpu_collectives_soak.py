r"""Soak: does a multi-device CPU run abort in XLA's collective rendezvous?

With two or more JAX CPU devices, XLA:CPU aborted jaxattn runs with
"Termination timeout for all reduce ... 40 seconds exceeded" (rc 134), loaded
or idle. The cause (``jaxattn/cpu_defaults.py``, ``client_threads``): XLA's
CPU client runs each device's part of a program and the dispatch of the next
program on one pool of max(cores, devices) threads, and a dispatch blocks a
thread while its device already has its maximum of computations in flight,
which JAX's asynchronous dispatch reaches whenever the host runs ahead
(train steps, CLU metric merges, evaluation batches). One blocked dispatch
then leaves another device's part of the running program without a thread,
and the devices that did start wait for it in their all-reduce until XLA
aborts. ``gdb -p PID -batch -ex "thread apply all bt"`` on a stuck run shows
exactly that: one pool thread in ``Semaphore::ScopedAcquire`` (a dispatch),
one in ``BlockUntilReady`` (device 0's part), an intra-op thread in
``InProcessCommunicator::AllReduce``, and device 1's part in no thread.

This runs the trainer's own pieces (``Experiment``'s jitted train and eval
steps of a config, CLU metric merges after every step as ``TrainLog`` does,
``RunCheckpoints``' asynchronous saves), in a fresh process per trial, for
``--seconds`` each, with the project's CPU defaults (two client threads per
device) or, with ``--threads=devices``, XLA's own sizing (one per device),
optionally beside ``--busy`` processes that spin on the cores::

  python benchmarks/cpu_collectives_soak.py --threads=devices --trials=3
  python benchmarks/cpu_collectives_soak.py --trials=3 --busy=2

A trial reports ``ok`` or ``aborted`` (and after how many seconds). XLA's
abort comes ``--terminate_s`` after the stall (40 s is XLA's default; the
benchmark uses 15 s to find stalls sooner: a healthy step here takes well
under a second even on a loaded host).
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
flags.DEFINE_enum("threads", "jaxattn", ["jaxattn", "devices"],
                  "XLA CPU client threads: jaxattn's (2 per device) or "
                  "XLA's own (one per device, when devices >= cores).")
flags.DEFINE_integer("trials", 3, "Fresh processes, one after the other.")
flags.DEFINE_integer("seconds", 120, "Length of each trial.")
flags.DEFINE_integer("busy", 0, "Processes spinning on the CPU beside it.")
flags.DEFINE_integer("terminate_s", 15, "XLA's rendezvous abort timeout.")
flags.DEFINE_string("json", "", "Also write the results here.")
flags.DEFINE_bool("child", False, "Internal: run one trial in this process.")

FLAGS = flags.FLAGS


def _mlp_body() -> None:
  """A 6-layer MLP's data-parallel step (one all-reduce), eager metric sums
  on both devices after each step, and 20 eval steps every 50: dispatched
  far ahead of the devices, as a trainer does."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jaxattn import parallel
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
  start, step = time.time(), 0
  while time.time() - start < FLAGS.seconds:
    total = None
    for _ in range(50):
      x = parallel.global_batch(
          rng.standard_normal((batch, width), dtype=np.float32), sharded)
      params, loss = train(params, x)
      total = loss if total is None else total + loss
      step += 1
    evals = sum(evaluate(params, x) for _ in range(20))
    print(f"{time.time() - start:7.1f} s  step {step}  train loss "
          f"{float(total):.4f}  eval loss {float(evals):.4f}", flush=True)


def _trial_body() -> None:
  """One trial: the trainer's multi-device traffic, as fast as it goes."""
  # pylint: disable=g-import-not-at-top
  import jax
  from jaxattn import checkpointing, configlib, cpu_defaults, experiment
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
  ckpt = checkpointing.RunCheckpoints(tempfile.mkdtemp(), keep=2)
  start, step = time.time(), 0
  while time.time() - start < FLAGS.seconds:
    merged = None
    for _ in range(20):  # Dispatched ahead; merged on the devices.
      state, metrics = exp.train_fn(state, train_batch)
      merged = metrics if merged is None else merged.merge(metrics)
      step += 1
    total = None
    for _ in range(5):
      batch_metrics = exp.eval_fn(state, eval_batch)
      total = batch_metrics if total is None else total.merge(batch_metrics)
    ckpt.save(step, state, {"step": step})  # Asynchronous.
    print(f"{time.time() - start:7.1f} s  step {step}  train loss "
          f"{float(merged.compute()['loss']):.4f}  eval loss "
          f"{float(total.compute()['loss']):.4f}", flush=True)
  ckpt.wait()
  ckpt.close()


def _run_trial() -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join([
      *env.get("XLA_FLAGS", "").split(),
      f"--xla_cpu_collective_call_terminate_timeout_seconds={FLAGS.terminate_s}"])
  env.pop("PJRT_NPROC", None)
  env.pop("NPROC", None)
  if FLAGS.threads == "devices":  # XLA's own: max(cores, devices).
    env["PJRT_NPROC"] = str(FLAGS.devices)
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
                 threads=FLAGS.threads, busy=FLAGS.busy,
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
