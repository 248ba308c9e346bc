r"""Seed 000 on CIFAR-100: frozen ViT-B/8 + local/non-local fusion + 2 heads.

The authors' CIFAR-100 recipe: inception crop (area 0.05-1) + flip at 224 px
(sayakpaul's make_dataset), inputs mapped to [-1, 1] and then again by the
model (their double normalisation, `model.double_normalization`), batch 64,
Adamax with WarmUpCosine (0.006 -> 0.03 over 10 steps, cosine to 0 at step
39,062) and Keras clipnorm 1.0 (per tensor), loss weights model0 0.7 / vit
0.3 / average 4.0, 90 epochs, early stopping (patience 3) on validation
loss, validation = the official test split (as theirs).

The frozen backbone starts from the AugReg ViT-B/8 that init_from names
(downloaded once; see the README's "Pretrained weights");
--config.init_from=PATH.npz takes a local file instead.

  python main.py --config=configs/cifar100_hybrid.py --workdir=/tmp/c100_hybrid
  python main.py --config=configs/cifar100_hybrid.py:smoke --workdir=/tmp/s
"""

from jaxattn import configlib, recipes


def get_config(arg=None):
  arg = configlib.parse_arg(arg, smoke=False, epochs=90)
  c = recipes.seed000_hybrid("tfds:cifar100")
  c.train_split, c.val_split, c.test_split = "train", "test", ""
  recipes.seed000_cifar100_recipe(c)
  c.num_epochs = arg.epochs
  c.log_every_steps = 100
  if arg.smoke:
    recipes.shrink_for_smoke(c, "mock:cifar100")
  return c
