r"""Train, resume or evaluate a jaxattn model.

  python main.py --config=configs/quickstart.py --workdir=/tmp/quickstart
  python -m jaxattn.main --config=quickstart --workdir=/tmp/quickstart  # installed
  python main.py --config=configs/cifar10_convvit.py:smoke --workdir=W \
      --config.batch_size=64
  python main.py --mode=eval --workdir=W [--checkpoint=best|latest|STEP] \
      [--split='train[90%:]']

Multi-process jobs (one process per GPU) start this same command in every
process: on SLURM or Open MPI it finds its peers itself; elsewhere pass
--coordinator_address, --num_processes and --process_id (launch/ has
sbatch, JobSet and local launchers). SIGTERM saves a checkpoint and exits 0;
the next start resumes.

On a CPU-only host every core becomes a JAX device (data parallel over the
cores, as over GPUs); --jax_num_cpu_devices=N or JAXATTN_CPU_DEFAULTS=0
overrides that (jaxattn/cpu_defaults.py).

Rerunning a training command on the same workdir resumes it; a finished run
is not trained again.

The console shows jaxattn's own log lines (what was chosen, progress with
ETA, one line per epoch and evaluation, where the results are) and everyone's
warnings; --library_logs adds the libraries' INFO lines (Orbax, CLU, JAX).
Bad input (a config value, a dataset, a locked workdir, ...) ends the run
with "error: MESSAGE" and exit status 1; --traceback shows where it was
raised.
"""

import sys

from absl import app, flags, logging

import jax
from jaxattn import configlib, console

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags; defined only when it runs, so that importing this
  module beside other absl programs (tests, notebooks) defines none."""
  flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
  flags.DEFINE_enum("mode", "train", ["train", "eval"],
                    "train: train and evaluate (resuming); eval: evaluate a "
                    "checkpoint and write its metrics as JSON in the workdir.")
  flags.DEFINE_string("checkpoint", "best",
                      "--mode=eval: best, latest or a step.")
  flags.DEFINE_string("split", "", "--mode=eval: split to evaluate (TFDS "
                      "slicing syntax); default: the config's test, else val "
                      "split.")
  flags.DEFINE_string("coordinator_address", None,
                      "Multi-process: HOST:PORT of process 0 (not needed on "
                      "SLURM / Open MPI, where it is detected).")
  flags.DEFINE_integer("num_processes", None,
                       "Multi-process: processes in the job (detected on "
                       "SLURM / Open MPI; 1 forces a single process).")
  flags.DEFINE_integer("process_id", None,
                       "Multi-process: this process, 0..N-1.")
  flags.DEFINE_integer("heartbeat_timeout_seconds", 100,
                       "Multi-process: a peer silent this long is dead and "
                       "the job aborts instead of hanging.")
  flags.DEFINE_bool("allow_cpu", False,
                    "Go on when an accelerator plugin is installed but JAX "
                    "came up on the CPU (without it the run stops and says "
                    "why; JAX_PLATFORMS=cpu asks for the CPU outright).")
  configlib.define_config_flag()
  flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Imported here so that --help stays fast and TF hides GPUs before use.
  # pylint: disable=g-import-not-at-top
  from jaxattn import (accelerator_check, compilation_cache, cpu_defaults,
                       distributed)
  # Both read data with tf.data: without TensorFlow (the data extra) this
  # raises data.MissingDataExtra, printed as one line (jaxattn.console).
  from jaxattn import evaluate, train
  # pylint: enable=g-import-not-at-top

  cpu_defaults.configure()  # CPU-only host: a JAX device per core.
  compilation_cache.configure()  # Reruns and requeued jobs skip compiling.
  distributed.initialize(distributed.Launch(
      coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
      heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_seconds))
  # A GPU plugin that did not load must not leave the run on the CPU unseen.
  accelerator_check.check(allow_cpu=FLAGS.allow_cpu)
  logging.info("JAX process %d/%d, local devices %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  if FLAGS.mode == "eval":  # The workdir's own config unless --config.
    evaluate.evaluate_checkpoint(FLAGS.workdir, checkpoint=FLAGS.checkpoint,
                                 split=FLAGS.split, config=FLAGS.config)
  else:
    try:
      config = configlib.config_from_flag()
      # Also checked when the run resolves its config; here a bad duration or
      # learning rate is a short usage error instead of a traceback.
      configlib.check_duration(config)
    except configlib.ConfigError as e:
      raise app.UsageError(str(e)) from None
    train.train_and_evaluate(config, FLAGS.workdir)
  distributed.shutdown()  # Finished (or preempted and saved): leave together.


def run() -> None:
  """``python -m jaxattn.main`` / ``python main.py`` / the ``jaxattn`` script."""
  # --config=NAME[:ARG] may name a config bundled with the package.
  sys.argv = configlib.expand_bundled_config(sys.argv)
  jax.config.config_with_absl()
  define_flags()
  console.run(main)  # app.run, with --library_logs and --traceback.


if __name__ == "__main__":
  run()
