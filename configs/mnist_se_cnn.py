r"""Seed 003: the authors' MNIST CNN with SE blocks after each conv stage.

Their quirks are kept: raw 0..255 inputs, BatchNorm scales frozen at 1,
SE hidden width C//16 (0, 1, 2: the first gate is a constant 0.5).
The notebooks report no accuracy (they were never executed).

  python main.py --config=configs/mnist_se_cnn.py --workdir=/tmp/mnist_se
  python main.py --config=configs/mnist_se_cnn.py:smoke --workdir=/tmp/s
"""

from jaxattn import configlib, recipes


def get_config(arg=None):
  arg = configlib.parse_arg(arg, smoke=False, epochs=10, batch=128)
  c = recipes.seed003_mnist_cnn("se")
  c.num_epochs, c.batch_size = arg.epochs, arg.batch
  c.log_every_steps = 100
  if arg.smoke:
    recipes.shrink_for_smoke(c, "mock:mnist")
  return c
