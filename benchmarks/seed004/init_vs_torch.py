"""Seed 004: the project's initial parameters against PyTorch's default
init of the seed's own module, tensor by tensor, over 8 seeds.

  python -m benchmarks.seed004.init_vs_torch
"""
import jax
import numpy as np
import torch

from benchmarks.seed004.seed_model import SeedViT
from jaxattn import recipes
from jaxattn.convert import commands
from jaxattn.experiment import Experiment

c = recipes.seed004_conv_vit()
c.dataset, c.compute_dtype = "mock:cifar10", "float32"
rows = {}
for seed in range(8):
  c.seed = seed
  state = Experiment(c, data="metadata").init_state()
  ours, _ = commands.state_dict_from_variables(
      "conv_vit", {"params": jax.device_get(state.params)})
  torch.manual_seed(seed)
  for key, value in SeedViT(32, 2, 3, 32, 4, 8).state_dict().items():
    a, b = np.asarray(ours[key]).ravel(), value.numpy().ravel()
    r = rows.setdefault(key, ([], [], [], []))
    for column, x in zip(r, (a.std(), b.std(), np.abs(a).max(),
                             np.abs(b).max())):
      column.append(x)
print(f"{'tensor':45s} {'std ours':>9s} {'torch':>9s} {'max ours':>9s} "
      f"{'torch':>9s}")
for key, columns in rows.items():
  print(f"{key:45s} " + " ".join(f"{np.mean(x):9.4f}" for x in columns))
