r"""GSoP-ResNet-50 (seed 003's GSoP block, placed as GSoP-Net places it).

GSoP blocks in the last bottleneck of each stage, after bn3 and before the
residual add, layer4 at stride 1, a linear head (GSoP-Net1). Seed 003 only
describes GSoP; this config trains it with seed 001's CIFAR recipe (Adam
1e-4, 64x64, batch 128, early stopping) so that it compares directly with
configs/cifar100_slresnet50.py.
Like it, it starts from torchvision:resnet{depth} (init_from; the GSoP blocks
and the head stay at their initialisation, layer4's weights load unchanged
at stride 1); --config.init_from='' starts from random weights.

  python main.py --config=configs/cifar100_gsop_resnet50.py --workdir=/tmp/gsop
  python main.py --config=configs/cifar100_gsop_resnet50.py:smoke --workdir=/tmp/s
"""

from jaxattn import configlib, recipes


def get_config(arg=None):
  arg = configlib.parse_arg(arg, smoke=False, depth=50, epochs=45, size=64)
  c = recipes.seed001_slresnet(arg.depth, image_size=arg.size,
                               authors_head=False)
  c.model = dict(name="gsop_resnet", depth=arg.depth)
  c.dataset = "tfds:cifar100"
  c.train_split, c.val_split, c.test_split = "train[:90%]", "train[90%:]", "test"
  c.num_epochs = arg.epochs
  c.log_every_steps = 50
  if arg.smoke:
    recipes.shrink_for_smoke(c, "mock:cifar100")
  return c
