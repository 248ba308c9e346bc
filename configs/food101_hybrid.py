r"""Seed 000's hybrid on Food-101 with the authors' Food-101 recipe.

The authors' Food-101 notebook trained a different ensemble (frozen ViT-B/8
+ an inception-style CNN); this config trains the hybrid with that
notebook's recipe: tfds:food101 (train 75,750 / validation 25,250), inception
crop (area 0.05-1) + flip at 224 px into [-1, 1], batch 32, Adamax (clipnorm
1.0 per tensor) with lr = 1e-4 * 0.96 ** floor(1 + epoch/4), early stopping
(patience 10) on validation loss, loss weights CNN head 0.25 / ViT head 0.75
(their 'dense3' / 'vit_'; the average is not in their loss).

The frozen backbone starts from the AugReg ViT-B/8 that init_from names
(downloaded once; see the README's "Pretrained weights");
--config.init_from=PATH.npz takes a local file instead.

  python main.py --config=configs/food101_hybrid.py --workdir=/tmp/food_hybrid
  python main.py --config=configs/food101_hybrid.py:smoke --workdir=/tmp/s
"""

from jaxattn import configlib, recipes


def get_config(arg=None):
  arg = configlib.parse_arg(arg, smoke=False, epochs=50)
  c = recipes.seed000_hybrid("tfds:food101")
  c.train_split, c.val_split, c.test_split = "train", "validation", ""
  recipes.inception_crop_and_flip(c)
  recipes.seed000_step_decay(c)
  c.grad_clip_norm, c.grad_clip_mode = 1.0, "per_tensor"
  c.loss_weights = dict(model0=0.25, vit=0.75)
  c.batch_size, c.eval_batch_size = 32, 64
  c.early_stopping_patience = 10
  c.num_epochs = arg.epochs
  c.log_every_steps = 200
  if arg.smoke:
    recipes.shrink_for_smoke(c, "mock:food101")
  return c
