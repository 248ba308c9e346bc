"""docs/ARCHITECTURE.md's call stack is the one a training run has.

A smoke run of ``python main.py`` records the first-party frames on the stack
when the train step's trace reaches ``ConvViT.__call__``; the document must
list them in that order and state their number.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

# Runs main.py in a fresh interpreter with a profile hook that records the
# stack at the first ConvViT.__call__ with train=True, then stops the run.
_RECORDER = r"""
import json, os, runpy, sys, traceback
repo, out = sys.argv[1], sys.argv[2]

class Recorded(BaseException):
  pass

def hook(frame, event, arg):
  if event != "call" or frame.f_code.co_name != "__call__":
    return
  module = frame.f_locals.get("self")
  if type(module).__name__ != "ConvViT" or not frame.f_locals.get("train"):
    return
  frames = []
  for f in traceback.extract_stack(frame):
    path = os.path.relpath(f.filename, repo)
    if path == "main.py" or path.startswith("jaxattn" + os.sep):
      frames.append([path, f.name])
  with open(out, "w") as fh:
    json.dump(frames, fh)
  sys.setprofile(None)
  raise Recorded()

sys.argv = ["main.py", "--config=configs/cifar10_convvit.py:smoke",
            "--workdir=" + sys.argv[3], "--config.num_steps=1",
            "--jax_num_cpu_devices=1"]  # No layout probe: seconds, not a minute.
sys.setprofile(hook)
try:
  runpy.run_path(os.path.join(repo, "main.py"), run_name="__main__")
except (Recorded, SystemExit):
  pass
"""


def _recorded_frames(tmp_path) -> list[tuple[str, str]]:
  out = tmp_path / "frames.json"
  env = dict(os.environ, PYTHONPATH=str(REPO))
  subprocess.run(
      [sys.executable, "-c", _RECORDER, str(REPO), str(out),
       str(tmp_path / "workdir")],
      cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
  return [tuple(f) for f in json.loads(out.read_text())]


def _call_stack_block() -> str:
  text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
  return text.split("```")[1]


def test_the_documented_call_stack_is_the_recorded_one(tmp_path):
  frames = _recorded_frames(tmp_path)
  assert frames[0] == ("main.py", "<module>")
  assert frames[-1] == (os.path.join("jaxattn", "models", "conv_vit",
                                     "model.py"), "__call__")
  # The block's words, in order: each frame's file (once per run of frames
  # in one file) and function must appear as a subsequence.
  words = re.split(r"[\s,]+", _call_stack_block())
  wanted = []
  for i, (path, function) in enumerate(frames):
    if i == 0 or frames[i - 1][0] != path:
      wanted.append(path.replace(os.sep, "/"))
    if function == "__call__":
      function = "ConvViT.__call__"
    if function != "<module>":
      wanted.append(function)
  position = 0
  for word in wanted:
    assert word in words[position:], (
        f"{word!r} (recorded frames: {frames}) is missing from, or out of "
        "order in, docs/ARCHITECTURE.md's call stack")
    position = words.index(word, position) + 1
  text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
  files = len({path for path, _ in frames})
  assert f"{len(frames)} frames in {files} files" in text, (len(frames), files)
