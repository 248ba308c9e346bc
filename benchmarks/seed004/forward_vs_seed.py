r"""Seed 004's forward and backward pass, rebuilt literally, against ours.

The seed's ``ViT`` (EVA-8 S10 notebook; ``shared/specs/seeds.md``, "Seed
004"), transcribed line for line in plain PyTorch in ``seed_model.py``:
channels-first
1x1 convs, ``queries @ keys.transpose(-2, -1) * scale`` then
``softmax(dim=-2)``, LayerNorm through ``transpose(1, -1)``, GELU before the
pool. The project's Flax ``ConvViT`` (its Gram-matrix attention, LayerNorms
folded into the next matmul, custom GELU/LayerNorm/dense gradients, chunked
trunk) is converted with the project's converter and compared with it on the
same images:

* logits: Flax float32 vs the seed in float64 and in float32, and the seed's
  float32 vs its own float64 (how much float32 alone explains); also Flax in
  the run's configured compute dtype (the recipe's bfloat16);
* gradients of the mean cross-entropy for every parameter, Flax (train=True,
  chunked, the path training uses) vs the seed in float64.

Run at init and on a trained run's checkpoint::

  python -m benchmarks.seed004.forward_vs_seed            # fresh init
  python -m benchmarks.seed004.forward_vs_seed --workdir=/tmp/convvit

Images: real CIFAR-10 JPEGs when ``--images=DIR`` (an image-folder tree)
is given, standardised like training; otherwise N(0, 1) noise.
"""

import argparse
import glob
import json

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.seed004.seed_model import SeedViT
from jaxattn import recipes
from jaxattn.convert import commands
from jaxattn.experiment import Experiment




def _images(directory, count, mean, std, seed):
  rng = np.random.default_rng(seed)
  if not directory:
    return rng.standard_normal((count, 32, 32, 3)).astype(np.float32)
  from PIL import Image
  files = sorted(glob.glob(f"{directory}/*/*.jpg"))
  picks = rng.choice(len(files), count, replace=False)
  pixels = np.stack([np.asarray(Image.open(files[i]).convert("RGB"))
                     for i in picks]).astype(np.float32) / 255.0
  return ((pixels - np.asarray(mean)) / np.asarray(std)).astype(np.float32)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", help="a trained conv_vit run (latest)")
  parser.add_argument("--images", help="image-folder tree of CIFAR JPEGs")
  parser.add_argument("--count", type=int, default=128)
  parser.add_argument("--json", help="write the figures here")
  args = parser.parse_args()

  if args.workdir:
    exp = Experiment.for_workdir(args.workdir)
    state, _, step = exp.restore("latest")
  else:
    config = recipes.seed004_conv_vit()
    config.dataset = "mock:cifar10"
    config.compute_dtype = "float32"
    exp = Experiment(config, data="metadata")
    state, step = exp.init_state(), 0
  config = exp.config
  variables = {"params": jax.device_get(state.params)}
  state_dict, _ = commands.state_dict_from_variables("conv_vit", variables)
  m = config.model
  seed = SeedViT(32, m.patch_size, 3, m.hidden_dim, m.depth, m.head_channels)
  seed.load_state_dict({k: torch.from_numpy(np.asarray(v))
                        for k, v in state_dict.items()}, strict=True)

  images = _images(args.images, args.count, config.pixel_mean,
                   config.pixel_std, 0)
  labels = np.random.default_rng(1).integers(0, 10, args.count)
  nchw = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())

  # Flax, float32, both paths.
  model = exp.model.clone(dtype=jnp.float32)

  def loss_fn(params, train):
    logits = model.apply({"params": params}, images, train=train)
    return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits),
                                         labels[:, None], 1)), logits

  _, flax_eval = loss_fn(variables["params"], False)
  # As the run's config computes (bf16 in the recipe, f32 with
  # --config.compute_dtype=float32).
  configured = np.asarray(exp.model.apply(variables, images, train=False),
                          np.float64)
  (_, flax_train), flax_grads = jax.value_and_grad(
      loss_fn, has_aux=True)(variables["params"], True)

  def seed_pass(dtype):
    net = SeedViT(32, m.patch_size, 3, m.hidden_dim, m.depth,
                  m.head_channels).to(dtype)
    net.load_state_dict(seed.state_dict())
    logits = net(nchw.to(dtype))
    F.cross_entropy(logits, torch.from_numpy(labels)).backward()
    grads = {k: p.grad.detach().double().numpy()
             for k, p in net.named_parameters()}
    return logits.detach().double().numpy(), grads

  seed64, grads64 = seed_pass(torch.float64)
  seed32, grads32 = seed_pass(torch.float32)
  flax_eval, flax_train = (np.asarray(flax_eval, np.float64),
                           np.asarray(flax_train, np.float64))

  # Flax gradients as a state_dict.
  flax_grad_sd, _ = commands.state_dict_from_variables(
      "conv_vit", {"params": jax.device_get(flax_grads)})

  def rel(a, b):
    return float(np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-30))

  out = {
      "step": int(step),
      "images": args.images or "noise",
      "logit_scale_max_abs": float(np.abs(seed64).max()),
      "logits_max_abs_diff": {
          "flax_eval_f32_vs_seed_f64": float(np.abs(flax_eval - seed64).max()),
          "flax_train_f32_vs_seed_f64": float(
              np.abs(flax_train - seed64).max()),
          "seed_f32_vs_seed_f64": float(np.abs(seed32 - seed64).max()),
          f"flax_configured_{config.compute_dtype}_vs_seed_f64": float(
              np.abs(configured - seed64).max()),
      },
      "argmax_agreement_flax_vs_seed_f64": float(
          np.mean(flax_eval.argmax(1) == seed64.argmax(1))),
      "grad_rel_err_vs_seed_f64": {
          k: {"flax_f32": rel(np.asarray(flax_grad_sd[k], np.float64),
                              grads64[k]),
              "seed_f32": rel(grads32[k], grads64[k])}
          for k in grads64},
  }
  worst = max(out["grad_rel_err_vs_seed_f64"].items(),
              key=lambda kv: kv[1]["flax_f32"])
  out["worst_grad"] = {"key": worst[0], **worst[1]}
  text = json.dumps(out, indent=1)
  print(text)
  if args.json:
    with open(args.json, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
