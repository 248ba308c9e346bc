"""The cluster launchers: syntax, and the command each renders for 2 nodes x
8 GPUs (SLURM's srun and Kubernetes are replaced by stubs / YAML checks)."""

import os
import re
import shlex
import subprocess
import sys

import yaml

from tests.conftest import REPO

SBATCH = REPO / "launch" / "slurm.sbatch"
JOBSET = REPO / "launch" / "jobset.yaml"


def test_sbatch_template_is_valid_bash():
  subprocess.run(["bash", "-n", str(SBATCH)], check=True)


def test_sbatch_asks_for_2_nodes_of_8_gpus_one_task_each():
  directives = dict(
      re.match(r"#SBATCH --([\w-]+)(?:=(\S+))?", line).groups()
      for line in SBATCH.read_text().splitlines()
      if line.startswith("#SBATCH"))
  assert directives["nodes"] == "2"
  assert directives["ntasks-per-node"] == "8"
  assert directives["gpus-per-node"] == "8"
  assert "gpus-per-task" not in directives  # See the template's comment.
  assert directives["signal"].startswith("TERM@")
  assert "requeue" in directives


def _render_sbatch(tmp_path, *, results_exist: bool):
  """Runs the batch script with stub srun/scontrol that log their argv."""
  stubs = tmp_path / "bin"
  stubs.mkdir()
  calls = tmp_path / "calls.txt"
  for name in ("srun", "scontrol"):
    stub = stubs / name
    stub.write_text(f'#!/bin/bash\necho "{name} $*" >> {calls}\n'
                    f'echo "$JAXATTN_COMPILATION_CACHE" > {tmp_path}/cache\n')
    stub.chmod(0o755)
  workdir = tmp_path / "run"
  workdir.mkdir()
  if results_exist:
    (workdir / "results.json").write_text("{}")
  env = dict(os.environ, PATH=f"{stubs}:{os.environ['PATH']}", HOME="/home/u",
             SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="2", SLURM_NTASKS="16",
             SLURM_SUBMIT_DIR="/cluster/jaxattn", JAXATTN_PYTHON="/env/python")
  env.pop("JAXATTN_COMPILATION_CACHE", None)  # The script's own default.
  proc = subprocess.run(
      ["bash", str(SBATCH), "configs/food101_hybrid.py", str(workdir),
       "--config.batch_size=512"], env=env, capture_output=True, text=True,
      check=True)
  assert "2 nodes, 16 tasks" in proc.stdout
  return [shlex.split(line) for line in calls.read_text().splitlines()]


def test_sbatch_renders_one_srun_of_main_py(tmp_path):
  calls = _render_sbatch(tmp_path, results_exist=True)
  assert len(calls) == 1
  srun = calls[0]
  assert srun[0] == "srun" and "--kill-on-bad-exit=1" in srun
  # One block of cores per task: each sizes its tf.data pool to its own.
  assert "--cpu-bind=cores" in srun and "--cpus-per-task=8" in srun
  command = srun[srun.index("/env/python"):]
  assert command == ["/env/python", "/cluster/jaxattn/main.py",
                     "--config=configs/food101_hybrid.py",
                     f"--workdir={tmp_path / 'run'}",
                     "--config.batch_size=512"]
  # Requeued jobs find the compiled steps on the shared home.
  assert (tmp_path / "cache").read_text().strip() == (
      "/home/u/.cache/jaxattn/xla")


def test_sbatch_requeues_an_unfinished_run(tmp_path):
  calls = _render_sbatch(tmp_path, results_exist=False)
  assert calls[-1] == ["scontrol", "requeue", "4242"]


def test_jobset_runs_one_process_per_node_on_2_nodes_of_8_gpus():
  jobset = yaml.safe_load(JOBSET.read_text())
  assert jobset["kind"] == "JobSet"
  [workers] = jobset["spec"]["replicatedJobs"]
  job = workers["template"]["spec"]
  assert job["parallelism"] == job["completions"] == 2
  assert job["completionMode"] == "Indexed"
  pod = job["template"]["spec"]
  [container] = pod["containers"]
  assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
  command = container["command"] + container["args"]
  assert command[:2] == ["python", "main.py"]
  flags = dict(a.split("=", 1) for a in container["args"])
  assert flags["--num_processes"] == "2"
  assert flags["--process_id"] == "$(PROCESS_ID)"
  [env] = [e for e in container["env"] if e["name"] == "PROCESS_ID"]
  assert "job-completion-index" in env["valueFrom"]["fieldRef"]["fieldPath"]
  # The coordinator is pod 0 of the set, under JobSet's DNS names.
  name, rjob = jobset["metadata"]["name"], workers["name"]
  assert flags["--coordinator_address"].startswith(f"{name}-{rjob}-0-0.{name}:")
  assert jobset["spec"]["network"]["enableDNSHostnames"] is True
  assert pod["terminationGracePeriodSeconds"] >= 60  # Time to save.
  # The compilation cache is on the volume every pod (and restart) mounts.
  [cache] = [e for e in container["env"]
             if e["name"] == "JAXATTN_COMPILATION_CACHE"]
  [mount] = [m for m in container["volumeMounts"] if m["name"] == "runs"]
  assert cache["value"].startswith(mount["mountPath"] + "/")


def test_local_launcher_needs_main_args_after_double_dash():
  proc = subprocess.run([sys.executable, str(REPO / "launch" / "local.py"),
                         "--processes", "2"], capture_output=True, text=True,
                        check=False)
  assert proc.returncode != 0 and "after '--'" in proc.stderr
