r"""Seed 002: ViT from scratch on MNIST (5 epochs; the seed reached 98.1%).

As in the seed, validation is the official test set (val = test).

  python main.py --config=configs/mnist_vit.py --workdir=/tmp/mnist_vit
  python main.py --config=configs/mnist_vit.py:smoke --workdir=/tmp/s
"""

from jaxattn import configlib, recipes


def get_config(arg=None):
  arg = configlib.parse_arg(arg, smoke=False, epochs=5, batch=32)
  c = recipes.seed002_vit()
  c.dataset = "tfds:mnist"
  c.image_size = (28, 28)
  c.train_split, c.val_split, c.test_split = "train", "test", ""
  c.num_epochs, c.batch_size = arg.epochs, arg.batch
  c.log_every_steps = 200
  if arg.smoke:
    recipes.shrink_for_smoke(c, "mock:mnist")
    c.model.depth, c.model.hidden_dim, c.model.mlp_dim = 1, 32, 64
  return c
