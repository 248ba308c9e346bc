r"""Seed 001: SL-ResNet-50 on CIFAR-10 at 64x64 (the README's setting).

The authors' recipe (jaxattn/recipes.py): Adam 1e-4, batch 128, no
augmentation, early stopping (patience 12) on validation loss, their 1000-way
head (`:authors_head=False` for a 10-way head). Validation is the last 10%
of train, test the official test split. They started from torchvision's
ImageNet weights, and so does this config: init_from names
torchvision:resnet{depth} (downloaded and converted once; the SL layers and
the head stay at their initialisation). --config.init_from='' starts from
random weights.

  python main.py --config=configs/cifar10_slresnet50.py --workdir=/tmp/c10_sl50
  python main.py --config=configs/cifar10_slresnet50.py:depth=101 --workdir=W
  python main.py --config=configs/cifar10_slresnet50.py:smoke --workdir=/tmp/s
"""

from jaxattn import configlib, recipes


def get_config(arg=None):
  arg = configlib.parse_arg(arg, smoke=False, depth=50, epochs=45,
                            authors_head=True, size=64)
  c = recipes.seed001_slresnet(arg.depth, image_size=arg.size,
                               authors_head=arg.authors_head)
  c.dataset = "tfds:cifar10"
  c.train_split, c.val_split, c.test_split = "train[:90%]", "train[90%:]", "test"
  c.num_epochs = arg.epochs
  c.log_every_steps = 50
  if arg.smoke:
    recipes.shrink_for_smoke(c, "mock:cifar10")
  return c
