r"""Seed 000 on CIFAR-10: frozen ViT-B/8 + local/non-local fusion + 2 heads.

The authors' CIFAR-10 recipe: 224 px inputs in [-1, 1] (resized from 32 px;
they used lanczos5 inside the model, here bilinear in the pipeline), no
augmentation, batch 64, Adamax with lr = 1e-4 * 0.96 ** floor(1 + epoch/4),
loss weights model0 0.75 / vit 0.25 / average 2.0, 50 epochs, early stopping
(patience 3) on validation loss. Their validation was a stratified 20% of the
training images; here train[80%:], with the official test split at the end.
The backbone starts from the AugReg ViT-B/8 that init_from names
(downloaded once; see the README's "Pretrained weights");
--config.init_from=PATH.npz takes a local file instead.

  python main.py --config=configs/cifar10_hybrid.py --workdir=/tmp/c10_hybrid
  python main.py --config=configs/cifar10_hybrid.py:smoke --workdir=/tmp/s
"""

from jaxattn import configlib, recipes


def get_config(arg=None):
  arg = configlib.parse_arg(arg, smoke=False, epochs=50)
  c = recipes.seed000_hybrid("tfds:cifar10")
  c.train_split, c.val_split, c.test_split = "train[:80%]", "train[80%:]", "test"
  recipes.seed000_step_decay(c)
  c.loss_weights = dict(model0=0.75, vit=0.25, average=2.0)
  c.early_stopping_patience = 3
  c.num_epochs = arg.epochs
  c.log_every_steps = 100
  if arg.smoke:
    recipes.shrink_for_smoke(c, "mock:cifar10")
  return c
