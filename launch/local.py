r"""Starts an N-process jaxattn job on this machine, like a scheduler would.

  python launch/local.py --processes 2 --devices-per-process 2 -- \
      --config=configs/quickstart.py:smoke --workdir=/tmp/w2

Each process runs ``main.py`` with the arguments after ``--`` plus
``--coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=i``,
and sees D simulated CPU devices
(``--xla_force_host_platform_device_count``): the same multi-controller code
path as a SLURM or Kubernetes job (``jax.distributed``, gloo collectives),
for tests and laptops. On a GPU machine ``--devices-per-process 0`` leaves
devices alone and gives process i the GPU i (``JAX_LOCAL_DEVICE_IDS``).

Process 0 prints to this terminal; the others write
``LOG_DIR/process_<i>.log`` (shown when a process fails). SIGTERM and SIGINT
are passed on to every process, as ``srun`` does, so preemption can be
tried here. The exit status is 0 when every process exits 0, else the first
failure's.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(base: dict[str, str], process_id: int,
                devices_per_process: int) -> dict[str, str]:
  """The environment of process `process_id`."""
  env = dict(base)
  if devices_per_process > 0:
    # Simulated CPU devices; drop any inherited count, keep other XLA flags.
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith(_DEVICE_COUNT_FLAG)]
    flags.append(f"{_DEVICE_COUNT_FLAG}={devices_per_process}")
    env["XLA_FLAGS"] = " ".join(flags)
    env["JAX_PLATFORMS"] = "cpu"
  else:
    env["JAX_LOCAL_DEVICE_IDS"] = str(process_id)
  return env


def command(main_args: list[str], *, port: int, processes: int,
            process_id: int, heartbeat_timeout: int) -> list[str]:
  return [sys.executable, str(REPO / "main.py"), *main_args,
          f"--coordinator_address=127.0.0.1:{port}",
          f"--num_processes={processes}", f"--process_id={process_id}",
          f"--heartbeat_timeout_seconds={heartbeat_timeout}"]


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  if "--" not in argv:
    raise SystemExit("usage: launch/local.py [options] -- MAIN_PY_ARGS... "
                     "(the arguments for main.py come after '--')")
  split = argv.index("--")
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--devices-per-process", type=int, default=1,
                      help="simulated CPU devices per process; 0 = real GPUs")
  parser.add_argument("--port", type=int, default=0,
                      help="coordinator port (default: a free one)")
  parser.add_argument("--heartbeat-timeout", type=int, default=30,
                      help="seconds before a silent peer counts as dead")
  parser.add_argument("--log-dir", default="",
                      help="logs of processes 1..N-1 (default: a temp dir)")
  parser.add_argument("--grace", type=float, default=120.0,
                      help="seconds the others get to exit after a failure")
  args = parser.parse_args(argv[:split])
  if args.processes < 1 or args.devices_per_process < 0:
    parser.error("--processes must be >= 1 and --devices-per-process >= 0")
  return args, argv[split + 1:]


def main(argv: list[str]) -> int:
  args, main_args = parse_args(argv)
  port = args.port or free_port()
  log_dir = pathlib.Path(args.log_dir or tempfile.mkdtemp(prefix="jaxattn_"))
  log_dir.mkdir(parents=True, exist_ok=True)
  procs, logs = [], []
  for i in range(args.processes):
    out = None
    if i > 0:
      out = open(log_dir / f"process_{i}.log", "w")  # pylint: disable=consider-using-with
      logs.append(out)
    procs.append(subprocess.Popen(  # pylint: disable=consider-using-with
        command(main_args, port=port, processes=args.processes, process_id=i,
                heartbeat_timeout=args.heartbeat_timeout),
        env=process_env(os.environ, i, args.devices_per_process), cwd=REPO,
        stdout=out, stderr=subprocess.STDOUT if out else None))
  print(f"[local.py] {args.processes} processes on 127.0.0.1:{port}; logs of "
        f"processes 1..{args.processes - 1} in {log_dir}", file=sys.stderr)

  def forward(signum, frame):  # pylint: disable=unused-argument
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, forward)

  first_failure, deadline = None, None
  while any(p.poll() is None for p in procs):
    for i, p in enumerate(procs):
      if p.returncode not in (None, 0) and first_failure is None:
        first_failure = i
        deadline = time.time() + args.grace
        print(f"[local.py] process {i} exited with {p.returncode}",
              file=sys.stderr)
    if deadline is not None and time.time() > deadline:
      for p in procs:  # The runtime should have stopped them; make sure.
        if p.poll() is None:
          p.kill()
    time.sleep(0.2)
  for f in logs:
    f.close()
  codes = [p.returncode for p in procs]
  failed = [i for i, c in enumerate(codes) if c != 0]
  if not failed:
    return 0
  first = first_failure if first_failure is not None else failed[0]
  for i in failed:
    if i > 0:
      tail = (log_dir / f"process_{i}.log").read_text()[-3000:]
      print(f"[local.py] process {i} exit code {codes[i]}; its log ends:\n"
            f"{tail}", file=sys.stderr)
  code = codes[first]
  return code if code > 0 else 128 - code  # -N (signal N) -> 128+N.


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
