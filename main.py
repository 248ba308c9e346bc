r"""Train, resume or evaluate a jaxattn model (the command is jaxattn/main.py).

  python main.py --config=configs/quickstart.py --workdir=/tmp/quickstart
  python main.py --mode=eval --workdir=W [--checkpoint=best|latest|STEP]

``python -m jaxattn.main`` and the ``jaxattn`` script of an installed package
are the same command; ``python main.py --help`` lists every flag.
"""

from jaxattn.main import run

if __name__ == "__main__":
  run()
