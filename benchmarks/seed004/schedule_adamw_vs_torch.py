"""Seed 004: the schedule per iteration against np.interp of the seed's
knots, and optax's AdamW + clipping against torch.optim.AdamW.

  python benchmarks/seed004/schedule_adamw_vs_torch.py
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from jaxattn import optim, recipes

KNOTS = ([0, 10, 20, 25], [0, 0.01, 0.01 / 20, 0])  # The seed's, 25 epochs.


def seed_lr(step: int, iterations: int) -> float:
  """The notebook sets lr every iteration at t = epoch + (i + 1) / iters."""
  epoch, i = divmod(step, iterations)
  return float(np.interp(epoch + (i + 1) / iterations, *KNOTS))


def main():
  config = recipes.seed004_conv_vit()
  # 390 / 391: 50,000 images with / without drop_remainder; 351: 45,000.
  for iterations in (390, 391, 351):
    schedule = optim.create_learning_rate_fn(config, iterations,
                                             25 * iterations)
    ours = np.asarray(jax.vmap(schedule)(jnp.arange(25 * iterations)))
    seed = np.array([seed_lr(s, iterations) for s in range(25 * iterations)])
    print(f"{iterations} iterations/epoch: max |ours - seed| = "
          f"{np.abs(ours - seed).max():.3g}; end-of-epoch lr at epochs 1, "
          f"10, 11, 20, 25: {np.round(ours[iterations - 1::iterations][[0, 9, 10, 19, 24]], 6)}")

  # AdamW (wd 0.01, eps 1e-8) after global-norm clipping 1.0, 3,000 steps
  # of the same random gradients on both sides.
  config.grad_clip_norm = 1.0
  iterations = 391
  tx = optim.create_optimizer(
      config, optim.create_learning_rate_fn(config, iterations,
                                            25 * iterations))
  rng = np.random.default_rng(0)
  start = {"a": rng.normal(size=(32, 32)).astype(np.float32),
           "b": rng.normal(size=(32,)).astype(np.float32)}
  params = jax.tree.map(jnp.asarray, start)
  state = tx.init(params)
  torch_params = [torch.nn.Parameter(torch.tensor(start[k])) for k in "ab"]
  adamw = torch.optim.AdamW(torch_params, lr=0.01, betas=(0.9, 0.999),
                            eps=1e-8, weight_decay=0.01)
  for step in range(3000):
    grads = {k: (0.3 * rng.normal(size=v.shape)).astype(np.float32)
             for k, v in start.items()}
    updates, state = tx.update(jax.tree.map(jnp.asarray, grads), state,
                               params)
    params = optax.apply_updates(params, updates)
    for group in adamw.param_groups:
      group["lr"] = seed_lr(step, iterations)
    for p, k in zip(torch_params, "ab"):
      p.grad = torch.tensor(grads[k])
    torch.nn.utils.clip_grad_norm_(torch_params, 1.0)
    adamw.step()
  diff = max(float(np.abs(np.asarray(params[k]) - p.detach().numpy()).max())
             for p, k in zip(torch_params, "ab"))
  print(f"AdamW + clipping, 3000 steps: max |optax - torch| = {diff:.3g} "
        f"(parameter scale {np.abs(start['a']).max():.2f})")


if __name__ == "__main__":
  main()
