r"""Train, resume or evaluate a jaxattn model (the command is jaxattn/main.py).

  python main.py --config=configs/quickstart.py --workdir=/tmp/quickstart
  python main.py --mode=eval --workdir=W [--checkpoint=best|latest|STEP]

``python -m jaxattn.main`` and the ``jaxattn`` script of an installed package
are the same command; ``python main.py --help`` lists its flags (--helpfull:
JAX's and absl's too).

The console shows jaxattn's own log lines and everyone's warnings
(--library_logs: the libraries' INFO lines too). Bad input ends the run with
"error: MESSAGE" and exit status 1 (--traceback: with the traceback).
"""

from jaxattn.main import run

if __name__ == "__main__":
  run()
