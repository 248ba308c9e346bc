r"""Seed 004's notebook recipe in PyTorch + torchvision, on the same JPEGs.

The side-by-side for issue 15: the seed's own model (``seed_model.py``), its
torchvision transforms, AdamW, per-iteration piecewise-linear schedule,
gradient clipping and batch sizes, trained on exactly the images the
project's ``configs/cifar10_convvit.py`` trains on with
``--config.dataset=folder:DIR`` (``train[:90%]`` of the project's fixed
permutation of the sorted file listing) and evaluated after every epoch on
``train[90%:]``. Writes a ``metrics.csv`` with the project's columns.

Differences from the notebook, forced by this machine: float32 on the CPU
(the seed ran CUDA AMP), and the data are the shared JPEG copy of CIFAR-10's
training images, split 45,000 / 5,000 (the seed trained on the 50,000
official images and tested on the official 10,000).

Needs torchvision, which does not import beside the project's torch 2.13
(``shared/ENV-NOTES.md``); in a side venv, from the repository root::

  python3 -m venv /work/tvenv
  /work/tvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy pillow
  /work/tvenv/bin/python -m benchmarks.seed004.torch_seed_recipe \
      --data=/tmp/cifar10 --out=/tmp/torch_seed004
"""

import argparse
import csv
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from benchmarks.seed004.seed_model import SeedViT

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
COLUMNS = ("epoch", "step", "train_loss", "train_accuracy", "val_loss",
           "val_accuracy", "learning_rate", "epoch_seconds")


def project_split(root: str):
  """jaxattn.data.sources.FolderSource's order: sorted classes and files,
  permuted with default_rng(0); returns (train[:90%], train[90%:])."""
  split_dir = os.path.join(root, "train")
  classes = sorted(d for d in os.listdir(split_dir)
                   if os.path.isdir(os.path.join(split_dir, d)))
  items = [(os.path.join(split_dir, c, f), i) for i, c in enumerate(classes)
           for f in sorted(os.listdir(os.path.join(split_dir, c)))
           if f.lower().endswith(EXTENSIONS)]
  order = np.random.default_rng(0).permutation(len(items))
  items = [items[i] for i in order]
  cut = len(items) * 90 // 100
  return items[:cut], items[cut:]


class Images(torch.utils.data.Dataset):

  def __init__(self, items, transform):
    self.items, self.transform = items, transform

  def __len__(self):
    return len(self.items)

  def __getitem__(self, i):
    path, label = self.items[i]
    return self.transform(Image.open(path).convert("RGB")), label


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", required=True, help="DIR with train/<class>/")
  parser.add_argument("--out", required=True)
  parser.add_argument("--epochs", type=int, default=25)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--threads", type=int, default=0,
                      help="torch threads (0: torch's default)")
  parser.add_argument("--workers", type=int, default=1)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  torch.manual_seed(args.seed)
  if args.threads:
    torch.set_num_threads(args.threads)

  # The notebook's transforms.
  train_tf = transforms.Compose([
      transforms.RandomResizedCrop(32, scale=(0.75, 1.0), ratio=(1.0, 1.0)),
      transforms.RandomHorizontalFlip(),
      transforms.RandAugment(num_ops=1, magnitude=8),
      transforms.ColorJitter(0.1, 0.1, 0.1),
      transforms.ToTensor(),
      transforms.Normalize(MEAN, STD),
      transforms.RandomErasing(p=0.25),
  ])
  test_tf = transforms.Compose([transforms.ToTensor(),
                                transforms.Normalize(MEAN, STD)])
  train_items, val_items = project_split(args.data)
  train = torch.utils.data.DataLoader(
      Images(train_items, train_tf), batch_size=128, shuffle=True,
      num_workers=args.workers, persistent_workers=args.workers > 0)
  val = torch.utils.data.DataLoader(Images(val_items, test_tf), batch_size=64,
                                    num_workers=args.workers)

  model = SeedViT(image_size=32, patch_size=2, in_channels=3,
                  embedding_dim=32, depth=4, head_channels=8)
  # The notebook: AdamW(lr=0.01 placeholder, weight_decay=0.01), lr set
  # every iteration by np.interp of the knots at epoch + (i+1)/iterations.
  optimizer = torch.optim.AdamW(model.parameters(), lr=0.01,
                                weight_decay=0.01)
  epochs = args.epochs
  knots = ([0, epochs * 2 // 5, epochs * 4 // 5, epochs],
           [0, 0.01, 0.01 / 20, 0])
  iterations = len(train)
  path = os.path.join(args.out, "metrics.csv")
  with open(path, "w", newline="") as f:
    csv.writer(f).writerow(COLUMNS)
  step = 0
  for epoch in range(epochs):
    model.train()
    start, loss_sum, correct, seen = time.time(), 0.0, 0, 0
    for i, (images, labels) in enumerate(train):
      lr = float(np.interp(epoch + (i + 1) / iterations, *knots))
      for group in optimizer.param_groups:
        group["lr"] = lr
      optimizer.zero_grad()
      logits = model(images)
      loss = F.cross_entropy(logits, labels)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      optimizer.step()
      step += 1
      loss_sum += loss.item() * len(labels)
      correct += int((logits.argmax(1) == labels).sum())
      seen += len(labels)
    seconds = time.time() - start
    model.eval()
    val_loss, val_correct, val_seen = 0.0, 0, 0
    with torch.no_grad():
      for images, labels in val:
        logits = model(images)
        val_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        val_correct += int((logits.argmax(1) == labels).sum())
        val_seen += len(labels)
    row = (epoch + 1, step, loss_sum / seen, correct / seen,
           val_loss / val_seen, val_correct / val_seen, lr, round(seconds, 2))
    with open(path, "a", newline="") as f:
      csv.writer(f).writerow(row)
    print(f"Epoch {epoch} | Train Acc: {correct / seen:.4f}, Val Acc: "
          f"{val_correct / val_seen:.4f}, Time: {seconds:.1f}, lr: {lr:.6f}",
          flush=True)
  torch.save(model.state_dict(), os.path.join(args.out, "model.pt"))


if __name__ == "__main__":
  main()
