r"""Seed 004: the 59,818-parameter fully-convolutional ViT on CIFAR-10.

The recipe is the seed's exactly (see jaxattn/recipes.py). Validation is the
last 10% of the training images; the official test split is evaluated once
at the end, on the best validation checkpoint (--config.test_checkpoint=last
for the final one). WORKDIR/metrics.csv has a row per epoch, and curves.png
draws the seed's reported test accuracy beside the validation curve. For the seed's own split (train on all 50k, validate on test):
--config.train_split=train --config.val_split=test --config.test_split=''.

  python main.py --config=configs/cifar10_convvit.py --workdir=/tmp/convvit
  # Offline, on the shared CIFAR-10 training JPEGs (extracted to DIR):
  python main.py --config=configs/cifar10_convvit.py --workdir=/tmp/convvit \
      --config.dataset=folder:DIR
  python main.py --config=configs/cifar10_convvit.py:smoke --workdir=/tmp/s
"""

from jaxattn import configlib, recipes


def get_config(arg=None):
  arg = configlib.parse_arg(arg, smoke=False, epochs=25, batch=128)
  c = recipes.seed004_conv_vit()
  c.train_split, c.val_split, c.test_split = "train[:90%]", "train[90%:]", "test"
  c.num_epochs = arg.epochs
  recipes.set_one_cycle(c, epochs=arg.epochs, peak_lr=0.01)
  c.batch_size = arg.batch
  if arg.epochs != 25 or arg.batch != 128 or arg.smoke:
    # The seed's curve belongs to its own schedule and batch only.
    c.reference_curve.per_epoch = ()
  c.log_every_steps = 100
  if arg.smoke:
    recipes.shrink_for_smoke(c, "mock:cifar10")
    c.model.depth = 1
  return c
