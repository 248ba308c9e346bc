r"""Quickstart: seed 002's ViT (scaled down) on real handwritten digits, offline.

The digits (1,797 8x8 images) ship inside scikit-learn, so this runs on a
fresh install with no network, through the same TFDS/tf.data pipeline,
trainer and checkpoints as every other config. About a minute on 2 CPU
cores, ~98% test accuracy. `:model=conv_vit` trains seed 004's conv-ViT
instead (~95%; its attention mixes channels, not tokens).

  python main.py --config=configs/quickstart.py --workdir=/tmp/quickstart
  python main.py --config=configs/quickstart.py:smoke --workdir=/tmp/qs_smoke
"""

from jaxattn import configlib


def get_config(arg=None):
  arg = configlib.parse_arg(arg, smoke=False, model="vit", epochs=30,
                            batch=64)
  c = configlib.base_config()
  c.dataset = "offline:digits"
  c.train_split, c.val_split, c.test_split = "train[:90%]", "train[90%:]", "test"
  c.image_size = (16, 16)  # 8x8 digits upsampled: 16 tokens of 4x4 patches.
  c.pixel_mean, c.pixel_std = (0.5,), (0.5,)
  c.augment.random_resized_crop = True
  c.augment.crop_scale, c.augment.crop_ratio = (0.8, 1.0), (0.9, 1.1)

  if arg.model == "conv_vit":
    c.model = dict(name="conv_vit", patch_size=2, hidden_dim=32, depth=4,
                   head_channels=8, drop_path_rate=0.0)
  elif arg.model == "vit":
    c.model = dict(name="vit", patch_size=4, hidden_dim=64, depth=4,
                   num_heads=4, mlp_dim=128, drop_path_rate=0.0)
  else:
    raise ValueError(f"quickstart model must be conv_vit or vit, not {arg.model!r}.")

  c.num_epochs = arg.epochs
  c.batch_size = arg.batch
  c.reference_batch_size = 64  # lr 3e-3 was set for this batch.
  c.eval_batch_size = 128
  c.optimizer.update(name="adamw", weight_decay=0.01)
  c.schedule.update(name="warmup_cosine", lr=3e-3, warmup_epochs=2.0)
  c.grad_clip_norm = 1.0
  c.log_every_steps = 20

  if arg.smoke:
    c.num_epochs = 1
    c.model.depth = 1
    c.eval_batch_size = 64
    c.log_every_steps = 5
  return c
