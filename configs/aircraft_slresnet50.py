r"""Seed 001: SL-ResNet-50 on FGVC-Aircraft (100 variants), 192x192.

TFDS has no FGVC-Aircraft builder, so the images come as an image folder:
DIR/train/<variant>/*.jpg and DIR/test/<variant>/*.jpg (the authors'
ImageFolder layout; note their test loader pointed at the train folder, which
is not reproduced). The recipe is the authors' (jaxattn/recipes.py): Adam
1e-4, batch 128, 45 epochs, early stopping with patience 12 on validation
loss, resize to 192, ImageNet normalisation, no augmentation, 1000-way head.
It starts from torchvision's ImageNet ResNet (init_from names
torchvision:resnet{depth}, downloaded and converted once);
--config.init_from='' starts from random weights.

  python main.py --config=configs/aircraft_slresnet50.py:data=DIR --workdir=/tmp/air
  python main.py --config=configs/aircraft_slresnet50.py:smoke --workdir=/tmp/s
"""

from jaxattn import configlib, recipes


def get_config(arg=None):
  arg = configlib.parse_arg(arg, smoke=False, depth=50, epochs=45,
                            authors_head=True, data="~/data/fgvc-aircraft")
  c = recipes.seed001_slresnet(arg.depth, image_size=192,
                               authors_head=arg.authors_head)
  c.dataset = f"folder:{arg.data}"
  c.train_split, c.val_split, c.test_split = "train", "test", ""
  c.num_epochs = arg.epochs
  c.cache = False  # 192 px images: decode every epoch instead.
  c.log_every_steps = 20
  if arg.smoke:
    # No aircraft metadata exists without the folder: 100-class mock images.
    recipes.shrink_for_smoke(c, "mock:cifar100")
  return c
