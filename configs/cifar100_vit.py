r"""Seed 002: ViT from scratch on CIFAR-100 (25 epochs; the seed: 41.0% test).

As in the seed, validation is the official test set (val = test).

  python main.py --config=configs/cifar100_vit.py --workdir=/tmp/c100_vit
  python main.py --config=configs/cifar100_vit.py:smoke --workdir=/tmp/s
"""

from jaxattn import configlib, recipes


def get_config(arg=None):
  arg = configlib.parse_arg(arg, smoke=False, epochs=25, batch=32)
  c = recipes.seed002_vit()
  c.dataset = "tfds:cifar100"
  c.image_size = (32, 32)
  c.train_split, c.val_split, c.test_split = "train", "test", ""
  recipes.cifar_crop_and_flip(c)
  c.num_epochs, c.batch_size = arg.epochs, arg.batch
  c.log_every_steps = 200
  if arg.smoke:
    recipes.shrink_for_smoke(c, "mock:cifar100")
    c.model.depth, c.model.hidden_dim, c.model.mlp_dim = 1, 32, 64
  return c
