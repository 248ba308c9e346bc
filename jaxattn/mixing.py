"""Mixup and CutMix in the train step, as timm's ``Mixup`` (batch mode).

One draw per batch, from the step's key (so a resumed run mixes as an
uninterrupted one did): with probability ``prob`` the batch is mixed with
itself reversed (example i with example B-1-i), by CutMix with probability
``switch_prob`` when both alphas are set (else by whichever is set), with
``lam ~ Beta(alpha, alpha)``. Mixup blends the images, ``lam * x + (1 -
lam) * x[::-1]``; CutMix pastes a box of area ``1 - lam`` (centre uniform,
clipped at the border) from the reversed batch and sets ``lam`` to the
area actually kept. Targets are ``lam * y + (1 - lam) * y[::-1]`` of
label-smoothed one-hots (off value ``smoothing / classes``, on value ``1 -
smoothing + off``), as timm's ``mixup_target``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from jaxattn.configlib import ConfigError


@dataclasses.dataclass(frozen=True)
class MixSpec:
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  prob: float = 1.0
  switch_prob: float = 0.5
  label_smoothing: float = 0.0

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "MixSpec":
    m = config.get("mixup") or {}
    spec = cls(mixup_alpha=float(m.get("mixup_alpha", 0.0)),
               cutmix_alpha=float(m.get("cutmix_alpha", 0.0)),
               prob=float(m.get("prob", 1.0)),
               switch_prob=float(m.get("switch_prob", 0.5)),
               label_smoothing=float(config.label_smoothing))
    if spec.mixup_alpha < 0 or spec.cutmix_alpha < 0 or not (
        0 <= spec.prob <= 1 and 0 <= spec.switch_prob <= 1):
      raise ConfigError(
          f"config.mixup={dict(m)}: alphas must be >= 0 and prob / "
          "switch_prob in [0, 1].")
    return spec

  @property
  def enabled(self) -> bool:
    return self.mixup_alpha > 0 or self.cutmix_alpha > 0


def smoothed_one_hot(labels: jax.Array, num_classes: int,
                     smoothing: float) -> jax.Array:
  off = smoothing / num_classes
  on = 1.0 - smoothing + off
  return jax.nn.one_hot(labels, num_classes) * (on - off) + off


def _box_mask(key: jax.Array, lam: jax.Array, height: int, width: int
              ) -> jax.Array:
  """[H, W] float mask, 1 inside the pasted box of area about 1 - lam."""
  cut_ratio = jnp.sqrt(1.0 - lam)
  cut_h = (height * cut_ratio).astype(jnp.int32)
  cut_w = (width * cut_ratio).astype(jnp.int32)
  key_y, key_x = jax.random.split(key)
  cy = jax.random.randint(key_y, (), 0, height)
  cx = jax.random.randint(key_x, (), 0, width)
  y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0,
                                                          height)
  x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0,
                                                         width)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  return ((rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)).astype(
      jnp.float32)


def mix_batch(key: jax.Array, images: jax.Array, labels: jax.Array,
              num_classes: int, spec: MixSpec
              ) -> tuple[jax.Array, jax.Array]:
  """(mixed images [B, H, W, C], soft targets [B, classes])."""
  targets = smoothed_one_hot(labels, num_classes, spec.label_smoothing)
  key_apply, key_switch, key_lam, key_box = jax.random.split(key, 4)
  apply = jax.random.uniform(key_apply) < spec.prob
  if spec.mixup_alpha > 0 and spec.cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(key_switch) < spec.switch_prob
  else:
    use_cutmix = jnp.asarray(spec.cutmix_alpha > 0)
  alpha = jnp.where(use_cutmix, spec.cutmix_alpha, spec.mixup_alpha)
  lam = jax.random.beta(key_lam, alpha, alpha).astype(jnp.float32)
  flipped = images[::-1]
  height, width = images.shape[1:3]
  box = _box_mask(key_box, lam, height, width)
  cut_lam = 1.0 - box.mean()  # The area actually kept.
  cutmix = images * (1 - box[None, :, :, None]) + flipped * box[None, :, :,
                                                                  None]
  mixup = lam * images + (1 - lam) * flipped
  mixed = jnp.where(use_cutmix, cutmix, mixup)
  lam = jnp.where(use_cutmix, cut_lam, lam)
  lam = jnp.where(apply, lam, 1.0)
  mixed = jnp.where(apply, mixed, images).astype(images.dtype)
  return mixed, lam * targets + (1 - lam) * targets[::-1]
