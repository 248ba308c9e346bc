r"""Seed 003: the authors' MNIST CNN with SA blocks after each conv stage.

Their quirks are kept: raw 0..255 inputs, BatchNorm scales frozen at 1,
SAGAN blocks (C//8 query/key width, gamma = 0: identity at start).
The notebooks report no accuracy (they were never executed).

  python main.py --config=configs/mnist_sa_cnn.py --workdir=/tmp/mnist_sa
  python main.py --config=configs/mnist_sa_cnn.py:smoke --workdir=/tmp/s
"""

from jaxattn import configlib, recipes


def get_config(arg=None):
  arg = configlib.parse_arg(arg, smoke=False, epochs=10, batch=128)
  c = recipes.seed003_mnist_cnn("sa")
  c.num_epochs, c.batch_size = arg.epochs, arg.batch
  c.log_every_steps = 100
  if arg.smoke:
    recipes.shrink_for_smoke(c, "mock:mnist")
  return c
