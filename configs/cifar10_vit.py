r"""Seed 002: ViT from scratch on CIFAR-10 (25 epochs; the seed: 64.9% test).

The seed's split: train = data batches 1-4 (train[:80%]), val = batch 5
(train[80%:]), test = the official test set.

  python main.py --config=configs/cifar10_vit.py --workdir=/tmp/c10_vit
  python main.py --config=configs/cifar10_vit.py:epochs=50 --workdir=/tmp/c10_vit50
  python main.py --config=configs/cifar10_vit.py:smoke --workdir=/tmp/s
"""

from jaxattn import configlib, recipes


def get_config(arg=None):
  arg = configlib.parse_arg(arg, smoke=False, epochs=25, batch=32)
  c = recipes.seed002_vit()
  c.dataset = "tfds:cifar10"
  c.image_size = (32, 32)
  c.train_split, c.val_split, c.test_split = "train[:80%]", "train[80%:]", "test"
  recipes.cifar_crop_and_flip(c)
  c.num_epochs, c.batch_size = arg.epochs, arg.batch
  c.log_every_steps = 200
  if arg.smoke:
    recipes.shrink_for_smoke(c, "mock:cifar10")
    c.model.depth, c.model.hidden_dim, c.model.mlp_dim = 1, 32, 64
  return c
